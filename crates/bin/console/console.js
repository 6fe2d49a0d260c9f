// Keel web console: plain JavaScript, no build step, served by every node at /console.
//
// Every second the page asks the node that served it for /nodes (members and whether it
// reaches them) and /status (its own view), and for every other member's /status through
// /console/peer/{id}/status (a browser may only read answers from the page's own origin).
// The leader's /status carries each member's replication lag (`replication`).
//
// Everything that comes from a server is inserted as text (textContent, attributes via
// setAttribute on created elements); the page never builds HTML from data.
'use strict';

(() => {
  /** Pause between two refreshes of the cluster view, in ms. */
  const POLL_MS = 1000;
  /** How long a request of the refresh may take before it counts as unanswered, in ms. */
  const REQUEST_TIMEOUT_MS = 3000;
  /** Samples kept per node for the lag chart: a minute at one per second. */
  const HISTORY = 60;
  /** Failed refreshes in a row before the page moves to another node (if allowed). */
  const SWITCH_AFTER = 3;
  /** Events kept in the list. */
  const MAX_EVENTS = 50;
  /** Rows shown per result table; the rest are counted, not drawn. */
  const MAX_ROWS = 1000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);

  /** What the page knows; see refresh(). */
  const state = {
    /** Node id (string) -> view of that member. */
    nodes: new Map(),
    /** Id of the node that served this page, from its /status. */
    self: null,
    /** `${id}/${term}` of the leader last seen, null for none, undefined before the first look. */
    leaderKey: undefined,
    /** { id, term, since: Date, witnessed: bool } or null. */
    leader: null,
    /** Refreshes in a row that this page's node did not answer. */
    failures: 0,
    /** When the page opened. */
    opened: new Date(),
    /** When the last refresh succeeded. */
    updated: null,
    /** Whether a move to another node is under way. */
    switching: false,
    /** Whether an admin action is under way (buttons are disabled meanwhile). */
    busy: false,
  };

  // ---- HTTP ------------------------------------------------------------------------------

  /** An error answer: `status` is the HTTP status (0 when nothing was answered). */
  class HttpError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  /**
   * Sends a request to this page's node and returns { status, body } for a 2xx answer
   * (body parsed as JSON when it is JSON); throws HttpError otherwise. Credentials the browser
   * holds for this origin are sent along, so an authenticating server sees them.
   */
  async function request(method, path, { body, timeout = REQUEST_TIMEOUT_MS } = {}) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeout);
    const init = { method, cache: 'no-store', credentials: 'same-origin', signal: controller.signal };
    if (body !== undefined) {
      init.headers = { 'Content-Type': 'application/json' };
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      const why = e.name === 'AbortError' ? `no answer within ${timeout / 1000} s` : 'no answer';
      throw new HttpError(0, why);
    } finally {
      clearTimeout(timer);
    }
    const text = await response.text().catch(() => '');
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON: keep the text.
    }
    if (!response.ok) {
      throw new HttpError(response.status, describeFailure(response, parsed), parsed);
    }
    return { status: response.status, body: parsed };
  }

  /** A plain sentence for an error answer; 401 and 403 say what they mean for the user. */
  function describeFailure(response, body) {
    const reason = body && typeof body === 'object' && typeof body.error === 'string'
      ? body.error
      : (typeof body === 'string' && body.trim()) || response.statusText || 'error';
    const code = `HTTP ${response.status}`;
    if (response.status === 401) {
      return `${code} Unauthorized: this needs credentials the browser did not send or the ` +
        `server did not accept (${reason}). Sign in to this node and try again.`;
    }
    if (response.status === 403) {
      return `${code} Forbidden: your credentials are valid but lack the permission this ` +
        `needs (${reason}).`;
    }
    return `${code}: ${reason}`;
  }

  // ---- DOM helpers ------------------------------------------------------------------------

  /** Creates an element with attributes and children (strings become text nodes). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'className') node.className = value;
      else if (name === 'text') node.textContent = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** hh:mm:ss of a date, local time. */
  function clock(date) {
    return date.toTimeString().slice(0, 8);
  }

  /** A duration in ms as text: "3.2 ms", "1.25 s". */
  function duration(ms) {
    return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;
  }

  /** The http(s) URL of a member's console, or null if its address is not an http(s) URL. */
  function consoleUrl(apiAddr) {
    try {
      const url = new URL(String(apiAddr));
      if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
      return new URL('/console', url).href;
    } catch {
      return null;
    }
  }

  function logEvent(text, kind = 'info') {
    const list = $('events');
    list.prepend(el('li', { className: kind }, el('time', { text: clock(new Date()) }), ' ', text));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  // ---- Cluster view -----------------------------------------------------------------------

  /** One refresh: fetch, merge into `state`, draw. Never throws. */
  async function refresh() {
    let list;
    let own;
    try {
      [list, own] = await Promise.all([
        request('GET', '/nodes?nonvoters&ver=2'),
        request('GET', '/status'),
      ]);
    } catch (e) {
      if (e instanceof HttpError && e.status === 0) {
        servingNodeDown(e);
      } else {
        showBanner(`This node answered with an error: ${e.message}`, false);
      }
      return;
    }
    servingNodeBack();
    const members = Array.isArray(list.body && list.body.nodes) ? list.body.nodes : [];
    state.self = own.body && own.body.node ? String(own.body.node.id) : null;
    $('served-by').textContent = state.self ? `node ${state.self} (${location.host})` : location.host;
    $('served-by').dataset.nodeId = state.self || '';

    const statuses = await Promise.all(members.map((m) => {
      const id = String(m.id);
      if (id === state.self) return Promise.resolve({ ok: true, body: own.body });
      return request('GET', `/console/peer/${encodeURIComponent(id)}/status`)
        .then((r) => ({ ok: true, body: r.body }), (e) => ({ ok: false, error: e.message }));
    }));

    const seen = new Set();
    members.forEach((m, i) => {
      const id = String(m.id);
      seen.add(id);
      let view = state.nodes.get(id);
      if (!view) {
        view = { id, history: [], reachable: null };
        state.nodes.set(id, view);
        if (state.updated) logEvent(`node ${id} joined the cluster`);
      }
      const answer = statuses[i];
      const status = answer.ok && answer.body && answer.body.node ? answer.body : null;
      const reachable = Boolean(m.reachable) && status !== null;
      if (view.reachable !== null && view.reachable !== reachable) {
        logEvent(reachable ? `node ${id} answers again` : `node ${id} is unreachable`,
          reachable ? 'info' : 'warn');
      }
      Object.assign(view, {
        apiAddr: m.api_addr,
        raftAddr: m.addr,
        voter: Boolean(m.voter),
        reachable,
        status,
        error: answer.ok ? null : answer.error,
      });
    });
    for (const id of [...state.nodes.keys()]) {
      if (!seen.has(id)) {
        state.nodes.delete(id);
        logEvent(`node ${id} left the cluster`);
      }
    }

    // The leader: a reachable member that says it leads, in the highest term.
    let leader = null;
    for (const view of state.nodes.values()) {
      const node = view.status && view.status.node;
      if (node && node.role === 'leader' && (!leader || node.term > leader.status.node.term)) {
        leader = view;
      }
    }
    const replication = leader && leader.status.replication && typeof leader.status.replication === 'object'
      ? leader.status.replication
      : null;
    for (const view of state.nodes.values()) {
      let lag = null;
      if (leader && view === leader) {
        lag = { entries: 0, ms: 0 };
      } else if (replication && replication[view.id]) {
        const r = replication[view.id];
        lag = { entries: r.lag_entries, ms: r.lag_ms };
      }
      view.lag = lag;
      view.history.push(lag && typeof lag.ms === 'number' ? lag.ms : null);
      if (view.history.length > HISTORY) view.history.shift();
    }
    trackLeader(leader ? leader.id : null, leader ? leader.status.node.term : null);
    state.updated = new Date();
    draw();
  }

  /** Records a change of leader (the first time, and each change after). */
  function trackLeader(id, term) {
    const key = id === null ? null : `${id}/${term}`;
    if (key === state.leaderKey) return;
    const first = state.leaderKey === undefined;
    state.leaderKey = key;
    if (key === null) {
      state.leader = null;
      logEvent(first ? 'no leader known' : 'no leader: an election is under way', 'warn');
      return;
    }
    state.leader = { id, term, since: new Date(), witnessed: !first };
    logEvent(first ? `node ${id} leads (term ${term})` : `node ${id} became the leader (term ${term})`);
  }

  function draw() {
    drawSummary();
    drawNodes();
    $('updated').textContent = `updated ${clock(state.updated)}`;
  }

  function drawSummary() {
    const box = $('leader-summary');
    box.replaceChildren();
    const l = state.leader;
    if (!l) {
      box.append(el('span', { id: 'leader-id', className: 'badge candidate', 'data-leader-id': '' },
        'no leader'), ' ', el('span', { className: 'muted' }, 'an election is under way, or no quorum'));
      return;
    }
    const since = l.witnessed
      ? `since ${clock(l.since)}`
      : `since before ${clock(state.opened)} (when this page opened)`;
    box.append(
      'Leader ',
      el('strong', { id: 'leader-id', 'data-leader-id': l.id }, `node ${l.id}`),
      el('span', { className: 'muted' }, ` · term ${l.term} · ${since}`),
    );
  }

  /** The role shown for a member: its own word if it answered, else what the membership says. */
  function roleOf(view) {
    const node = view.status && view.status.node;
    if (node && typeof node.role === 'string') return node.role;
    return view.voter ? 'voter' : 'learner';
  }

  function drawNodes() {
    const body = $('nodes').tBodies[0];
    const ids = [...state.nodes.keys()].sort((a, b) => Number(a) - Number(b));
    const rows = new Map([...body.rows].map((r) => [r.dataset.nodeId, r]));
    for (const [id, row] of rows) {
      if (!state.nodes.has(id)) row.remove();
    }
    ids.forEach((id, index) => {
      const view = state.nodes.get(id);
      const row = rows.get(id) || el('tr', { 'data-node-id': id });
      const node = view.status && view.status.node;
      const role = roleOf(view);
      const addr = String(view.apiAddr || '').replace(/^https?:\/\//, '');
      const url = consoleUrl(view.apiAddr);
      const lag = view.lag;
      // Rebuild the cells only when what they show changed, so buttons under the pointer or
      // the keyboard focus survive the refresh; the chart changes every time.
      const shown = JSON.stringify([id === state.self, role, view.reachable, view.error, addr,
        node && node.term, node && node.applied_index, lag, view.voter, state.busy]);
      if (row.dataset.shown !== shown) {
        row.dataset.shown = shown;
        row.replaceChildren(
          el('td', { className: 'id' }, el('strong', {}, id), id === state.self
            ? el('span', { className: 'muted small' }, ' (this page)') : null),
          el('td', { className: 'role' }, el('span', {
            className: `badge ${role}${view.reachable ? '' : ' stale'}`,
            'data-role': role,
          }, role)),
          el('td', { className: 'addr' }, url && id !== state.self
            ? el('a', { href: url, title: `open the console on node ${id}` }, addr)
            : addr),
          el('td', { className: 'num term' }, node ? String(node.term) : '—'),
          el('td', { className: 'num applied' }, node ? String(node.applied_index) : '—'),
          el('td', { className: 'num lag-entries' }, lag && lag.entries != null ? String(lag.entries) : '—'),
          el('td', { className: 'num lag-ms' }, lag && lag.ms != null ? String(lag.ms) : '—'),
          el('td', { className: 'reachable' }, view.reachable
            ? el('span', { className: 'ok' }, 'yes')
            : el('span', { className: 'bad', title: view.error || 'not answering' }, 'no')),
          el('td', { className: 'chart' }),
          el('td', { className: 'actions' }, ...actionButtons(view, role)),
        );
      }
      row.querySelector('td.chart').replaceChildren(sparkline(view.history));
      row.classList.toggle('unreachable', !view.reachable);
      row.classList.toggle('is-leader', role === 'leader');
      if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
    });
  }

  function actionButtons(view, role) {
    const buttons = [];
    if (role !== 'leader') {
      const b = el('button', { type: 'button', className: 'small-button', 'data-action': 'promote',
        disabled: state.busy }, 'Promote');
      b.addEventListener('click', () => promote(view));
      buttons.push(b);
    }
    const r = el('button', { type: 'button', className: 'small-button danger', 'data-action': 'remove',
      disabled: state.busy }, 'Remove');
    r.addEventListener('click', () => remove(view, role));
    buttons.push(r);
    return buttons;
  }

  /** An inline SVG chart of lag in ms; gaps where the lag was unknown. */
  function sparkline(samples) {
    const w = 140;
    const h = 28;
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('width', String(w));
    svg.setAttribute('height', String(h));
    svg.setAttribute('class', 'spark');
    const known = samples.filter((s) => s !== null);
    const max = Math.max(10, ...known);
    const label = known.length ? `${known[known.length - 1]} ms now, at most ${Math.max(...known)} ms` : 'no data';
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', `lag over the last minute: ${label}`);
    const title = document.createElementNS(SVG_NS, 'title');
    title.textContent = `lag (ms), last ${samples.length} s: ${label}; scale 0–${max} ms`;
    svg.append(title);
    const area = document.createElementNS(SVG_NS, 'rect');
    for (const [k, v] of [['x', 0], ['y', 0], ['width', w], ['height', h], ['class', 'area']]) {
      area.setAttribute(k, String(v));
    }
    svg.append(area);
    const base = document.createElementNS(SVG_NS, 'line');
    for (const [k, v] of [['x1', 0], ['x2', w], ['y1', h - 1], ['y2', h - 1], ['class', 'axis']]) {
      base.setAttribute(k, String(v));
    }
    svg.append(base);
    const step = w / (HISTORY - 1);
    const offset = HISTORY - samples.length;
    let points = [];
    const flush = () => {
      if (points.length === 1) points.push([points[0][0] + 1, points[0][1]]);
      if (points.length) {
        const line = document.createElementNS(SVG_NS, 'polyline');
        line.setAttribute('points', points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' '));
        line.setAttribute('class', 'line');
        svg.append(line);
      }
      points = [];
    };
    samples.forEach((s, i) => {
      if (s === null) {
        flush();
        return;
      }
      points.push([(offset + i) * step, h - 2 - (Math.min(s, max) / max) * (h - 4)]);
    });
    flush();
    const last = samples.length - 1;
    if (last >= 0 && samples[last] !== null) {
      const dot = document.createElementNS(SVG_NS, 'circle');
      const y = h - 2 - (Math.min(samples[last], max) / max) * (h - 4);
      for (const [k, v] of [['cx', (offset + last) * step - 2], ['cy', y], ['r', 2], ['class', 'now']]) {
        dot.setAttribute(k, String(v));
      }
      svg.append(dot);
    }
    return svg;
  }

  // ---- When this page's node stops answering ---------------------------------------------

  function showBanner(text, offerOthers) {
    $('banner-text').textContent = text;
    const links = $('banner-links');
    links.replaceChildren();
    if (offerOthers) {
      const others = [...state.nodes.values()].filter((v) => v.id !== state.self && consoleUrl(v.apiAddr));
      if (others.length) {
        links.append('Open the console on: ');
        others.forEach((v, i) => {
          if (i) links.append(' · ');
          links.append(el('a', { href: consoleUrl(v.apiAddr) }, `node ${v.id}`));
        });
      }
    }
    $('banner').hidden = false;
  }

  function servingNodeDown(error) {
    state.failures += 1;
    if (state.failures === 1) {
      logEvent(`node ${state.self || location.host} (this page's server) is not answering`, 'warn');
    }
    const last = state.updated ? `What is shown is from ${clock(state.updated)}.` : '';
    showBanner(`The node that served this page (${state.self ? `node ${state.self}, ` : ''}` +
      `${location.host}) is not answering: ${error.message}. ${last}`, true);
    for (const view of state.nodes.values()) {
      view.history.push(null);
      if (view.history.length > HISTORY) view.history.shift();
    }
    if (state.updated) drawNodes();
    if ($('auto-switch').checked && state.failures >= SWITCH_AFTER && !state.switching) {
      switchNode();
    }
  }

  function servingNodeBack() {
    if (state.failures > 0) logEvent('this page\'s node answers again');
    state.failures = 0;
    $('banner').hidden = true;
  }

  /**
   * Moves to the console of the first other member that answers. Another origin's answer
   * cannot be read, but a `no-cors` request still fails when nothing answers, which is all
   * that is needed here.
   */
  async function switchNode() {
    state.switching = true;
    const candidates = [...state.nodes.values()]
      .filter((v) => v.id !== state.self && consoleUrl(v.apiAddr))
      .sort((a, b) => Number(b.reachable) - Number(a.reachable));
    for (const view of candidates) {
      const target = consoleUrl(view.apiAddr);
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), 1500);
      try {
        await fetch(new URL('/readyz?noleader', target).href, {
          mode: 'no-cors', cache: 'no-store', signal: controller.signal,
        });
        if (!$('auto-switch').checked) break;
        logEvent(`moving to node ${view.id}`);
        location.assign(target);
        return;
      } catch {
        // Not answering either: try the next.
      } finally {
        clearTimeout(timer);
      }
    }
    state.switching = false;
  }

  // ---- Admin actions ----------------------------------------------------------------------

  /** Opens the confirmation dialog; resolves true if the user confirms. */
  function confirmAction(title, text, okLabel) {
    const dialog = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okLabel;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = 'cancel';
      dialog.showModal();
    });
  }

  function showActionResult(text, ok) {
    const box = $('action-result');
    box.textContent = `${clock(new Date())} ${text}`;
    box.className = `action-result ${ok ? 'ok' : 'error'}`;
    box.hidden = false;
  }

  /** Runs an admin request with the buttons disabled; reports the outcome. */
  async function adminAction(what, method, path, body, describe) {
    state.busy = true;
    drawNodes();
    showActionResult(`${what}…`, true);
    try {
      // Changes may wait for a node to catch up: allow as long as the server does.
      const answer = await request(method, path, { body, timeout: 130000 });
      const text = describe(answer.body || {});
      showActionResult(text, true);
      logEvent(text);
    } catch (e) {
      showActionResult(`${what} failed: ${e.message}`, false);
      logEvent(`${what} failed: ${e.message}`, 'warn');
    } finally {
      state.busy = false;
      drawNodes();
    }
  }

  async function promote(view) {
    const learner = !view.voter;
    const ok = await confirmAction(
      `Make node ${view.id} the leader?`,
      (learner ? `Node ${view.id} is a learner: it is made a voter first. ` : '') +
        `Leadership is transferred once node ${view.id} has caught up; writes pause for a ` +
        'moment during the transfer.',
      'Promote',
    );
    if (!ok) return;
    await adminAction(`Promoting node ${view.id}`, 'POST',
      `/admin/promote?node=${encodeURIComponent(view.id)}`, undefined,
      (a) => `node ${a.leader ?? view.id} is now the leader (term ${a.term ?? '?'})`);
  }

  async function remove(view, role) {
    const ok = await confirmAction(
      `Remove node ${view.id} from the cluster?`,
      `Node ${view.id} (${role}, ${String(view.apiAddr || '')}) stops receiving the log and no ` +
        'longer counts toward the quorum. The process keeps running until you stop it; to ' +
        'bring it back, add it again.' +
        (role === 'leader' ? ' The leader itself cannot be removed: promote another node first.' : ''),
      'Remove',
    );
    if (!ok) return;
    await adminAction(`Removing node ${view.id}`, 'DELETE', '/remove', { id: view.id },
      (a) => `node ${a.removed ?? view.id} was removed from the cluster`);
  }

  async function addLearner(event) {
    event.preventDefault();
    const form = event.target;
    const id = form.elements.id.value.trim();
    const raft = form.elements.raft_addr.value.trim();
    const http = form.elements.http_addr.value.trim();
    const hostPort = /^[^\s/]+:\d{1,5}$/;
    const problems = [];
    if (!/^[1-9]\d*$/.test(id)) problems.push('the node id must be a positive whole number');
    if (!hostPort.test(raft)) problems.push('the Raft address must be host:port');
    if (!hostPort.test(http)) problems.push('the HTTP address must be host:port');
    if (problems.length) {
      showActionResult(`Cannot add the learner: ${problems.join('; ')}.`, false);
      return;
    }
    const ok = await confirmAction(
      `Add node ${id} as a learner?`,
      `Node ${id} (Raft ${raft}, HTTP ${http}) is added as a non-voting replica: it receives ` +
        'the log (or a snapshot first) and serves reads, but does not vote.',
      'Add learner',
    );
    if (!ok) return;
    await adminAction(`Adding node ${id} as a learner`, 'POST', '/admin/membership',
      { action: 'add-learner', id: Number(id), raft_addr: raft, http_addr: http },
      (a) => `node ${a.id ?? id} was added as a learner`);
    form.reset();
  }

  // ---- SQL editor -------------------------------------------------------------------------

  /**
   * Splits text into statements at semicolons outside quotes, brackets and comments, keeping
   * a CREATE TRIGGER whole (its body has semicolons; it ends at END;).
   */
  function splitStatements(text) {
    const out = [];
    let start = 0;
    let i = 0;
    const n = text.length;
    const current = () => text.slice(start, i);
    while (i < n) {
      const c = text[i];
      if (c === '\'' || c === '"' || c === '`' || c === '[') {
        const close = c === '[' ? ']' : c;
        i += 1;
        while (i < n) {
          if (text[i] === close) {
            if (close !== ']' && text[i + 1] === close) { i += 2; continue; }
            break;
          }
          i += 1;
        }
        i += 1;
      } else if (c === '-' && text[i + 1] === '-') {
        while (i < n && text[i] !== '\n') i += 1;
      } else if (c === '/' && text[i + 1] === '*') {
        const end = text.indexOf('*/', i + 2);
        i = end < 0 ? n : end + 2;
      } else if (c === ';') {
        const stmt = current();
        const trigger = /^\s*create\s+(temp\s+|temporary\s+)?trigger\b/i.test(stripComments(stmt));
        if (!trigger || /\bend\s*$/i.test(stripComments(stmt))) {
          out.push(stmt);
          start = i + 1;
        }
        i += 1;
      } else {
        i += 1;
      }
    }
    out.push(text.slice(start));
    return out.map((s) => s.trim()).filter((s) => stripComments(s).trim() !== '');
  }

  /** Text without SQL comments (for the keyword checks of splitStatements). */
  function stripComments(s) {
    return s.replace(/--[^\n]*/g, ' ').replace(/\/\*[\s\S]*?(\*\/|$)/g, ' ');
  }

  /** A cell's text: SQL values arrive as JSON numbers, strings or null (NULL is drawn apart). */
  function cell(value) {
    if (value === null) return el('td', { className: 'null' }, 'NULL');
    if (typeof value === 'object') return el('td', {}, JSON.stringify(value));
    return el('td', {}, String(value));
  }

  function resultBlock(result, statement, index) {
    const block = el('div', { className: 'result', 'data-index': index },
      el('div', { className: 'statement' }, el('span', { className: 'muted' }, `${index + 1}. `),
        el('code', {}, statement.length > 300 ? `${statement.slice(0, 300)}…` : statement)));
    if (!result || typeof result !== 'object') {
      block.append(el('p', { className: 'error' }, 'no result for this statement'));
      return block;
    }
    if (typeof result.error === 'string') {
      block.append(el('p', { className: 'error' }, result.error));
      return block;
    }
    const time = typeof result.time === 'number' ? ` · ${duration(result.time * 1000)}` : '';
    if (Array.isArray(result.columns)) {
      const values = Array.isArray(result.values) ? result.values : [];
      const types = Array.isArray(result.types) ? result.types : [];
      const table = el('table', { className: 'rows' },
        el('thead', {}, el('tr', {}, ...result.columns.map((c, i) =>
          el('th', { scope: 'col', title: types[i] ? `type: ${types[i]}` : null }, String(c))))));
      const tbody = el('tbody');
      for (const row of values.slice(0, MAX_ROWS)) {
        tbody.append(el('tr', {}, ...(Array.isArray(row) ? row : []).map(cell)));
      }
      table.append(tbody);
      const more = values.length > MAX_ROWS ? ` (first ${MAX_ROWS} shown)` : '';
      block.append(el('div', { className: 'table-wrap' }, table),
        el('p', { className: 'muted small' }, `${values.length} row${values.length === 1 ? '' : 's'}${more}${time}`));
      return block;
    }
    const parts = [`${result.rows_affected || 0} row${result.rows_affected === 1 ? '' : 's'} affected`];
    if (result.last_insert_id) parts.push(`last insert id ${result.last_insert_id}`);
    block.append(el('p', { className: 'exec' }, parts.join(' · '), el('span', { className: 'muted' }, time)));
    return block;
  }

  async function runSql() {
    const text = $('sql').value;
    const statements = splitStatements(text);
    const results = $('results');
    const meta = $('sql-meta');
    if (!statements.length) {
      meta.replaceChildren(el('span', { className: 'error' }, 'Nothing to run: type a statement first.'));
      results.replaceChildren();
      return;
    }
    const level = $('level').value;
    const durability = $('durability').value;
    const params = new URLSearchParams({ timings: '', level });
    if (durability) params.set('durability', durability);
    const run = $('run');
    run.disabled = true;
    meta.replaceChildren(el('span', { className: 'muted' }, 'running…'));
    const started = performance.now();
    try {
      const answer = await request('POST', `/db/request?${params}`, { body: statements, timeout: 60000 });
      const took = performance.now() - started;
      const body = answer.body || {};
      const list = Array.isArray(body.results) ? body.results : [];
      // A batch that changed nothing answered through the read path; otherwise it was a write.
      const write = list.some((r) => r && !Array.isArray(r.columns) && typeof r.error !== 'string');
      const how = write
        ? `write, durability ${durability || 'cluster default'}`
        : `read, level ${level}`;
      meta.replaceChildren(
        el('span', { className: 'lsn', 'data-lsn': body.lsn }, `lsn ${body.lsn ?? '?'}`),
        ` · ${how} · `,
        typeof body.time === 'number' ? `server ${duration(body.time * 1000)} · ` : '',
        `round trip ${duration(took)}`,
        typeof body.error === 'string' ? el('span', { className: 'error' }, ` · ${body.error}`) : '',
      );
      results.replaceChildren(...statements.map((s, i) => resultBlock(list[i], s, i)));
    } catch (e) {
      const took = performance.now() - started;
      const extra = e.body && e.body.committed === true
        ? ` The write IS committed (lsn ${e.body.lsn}); only the replica confirmation is missing.`
        : '';
      meta.replaceChildren(el('span', { className: 'muted' }, `failed after ${duration(took)}`));
      results.replaceChildren(el('p', { className: 'error request-error' }, `${e.message}${extra}`));
    } finally {
      run.disabled = false;
    }
  }

  // ---- Start ------------------------------------------------------------------------------

  async function loop() {
    const started = Date.now();
    try {
      await refresh();
    } catch (e) {
      // A bug in the page must not stop the refreshes; make it visible instead.
      console.error(e);
      showBanner(`The console failed to draw an answer: ${e.message}`, false);
    }
    setTimeout(loop, Math.max(0, POLL_MS - (Date.now() - started)));
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('run').addEventListener('click', runSql);
    $('sql').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        runSql();
      }
    });
    $('add-learner-form').addEventListener('submit', addLearner);
    $('auto-switch').addEventListener('change', (e) => {
      if (e.target.checked && state.failures >= SWITCH_AFTER && !state.switching) switchNode();
    });
    loop();
  });
})();
