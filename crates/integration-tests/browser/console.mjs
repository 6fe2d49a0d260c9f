// Drives the Keel web console in a real Chromium for crates/integration-tests/tests/console_browser.rs.
//
// Usage: node console.mjs '<json>' where the JSON names
//   url         the console on a follower, e.g. "http://127.0.0.1:40123/console"
//   page        the id of that follower
//   nodes       the cluster's node ids, e.g. ["1", "2", "3"]
//   leader      the id the test found leading
//   learners    the ids of the learners
//   screenshot  where to write the PNG
//   timeoutMs   the deadline of each step
//   chromium    the browser executable (default /usr/bin/chromium)
//
// What it does, and the protocol with the test (one line each on stdout / stdin):
//   the page shows every node, the leader, lag charts; SQL runs from the editor; 401 and 403
//   answers (made up in the browser) are shown as such; a bad learner id is refused in the
//   page; the Promote button (its dialog cancelled once, then confirmed) moves leadership to
//   the other follower
//   -> READY_TO_KILL <leader id as the page shows it>
//   <- KILLED                      (the test killed that process)
//   -> NEW_LEADER <id>             (the page shows another leader; then the screenshot)
//   -> READY_TO_KILL_PAGE <id>     (the node that served the page)
//   <- KILLED
//   -> MOVED <id>                  (the page said its node is gone and moved to node <id>)
//   -> DONE
// Any failure prints FAILED <reason> on stdout, the page's console messages on stderr, and
// exits with status 1. Every wait has a deadline; nothing sleeps for a fixed time.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const config = JSON.parse(process.argv[2] ?? '{}');
for (const key of ['url', 'page', 'nodes', 'leader', 'screenshot']) {
  if (config[key] === undefined) {
    console.log(`FAILED missing "${key}" in the configuration argument`);
    process.exit(2);
  }
}
const timeout = config.timeoutMs ?? 20000;
const nodes = config.nodes.map(String);
const pageNode = String(config.page);
const learners = (config.learners ?? []).map(String);

const lines = createInterface({ input: process.stdin });
const incoming = lines[Symbol.asyncIterator]();

/** The next line from the test, or an error once `ms` have passed. */
async function readLine(ms) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no line from the test within ${ms} ms`)), ms);
  });
  try {
    const { value, done } = await Promise.race([incoming.next(), deadline]);
    if (done) throw new Error('the test closed stdin');
    return value.trim();
  } finally {
    clearTimeout(timer);
  }
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const messages = [];
const profile = await mkdtemp(join(tmpdir(), 'keel-console-chromium-'));
let context;
let step = 'launching Chromium';
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: config.chromium ?? '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    timeout,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  context.setDefaultTimeout(timeout);
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (m) => messages.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => messages.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => messages.push(`request failed: ${r.method()} ${r.url()} (${r.failure()?.errorText})`));
  const promotions = [];
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/admin/promote') promotions.push(`${r.method()} ${r.url()}`);
  });

  step = `loading ${config.url}`;
  const response = await page.goto(config.url);
  check(response && response.status() === 200, `GET ${config.url} answered ${response?.status()}`);

  step = 'waiting for every node to be listed, reachable, with a role and a term';
  await page.waitForFunction((ids) => {
    const rows = [...document.querySelectorAll('#nodes tbody tr')];
    const seen = rows.map((r) => r.dataset.nodeId).sort();
    return JSON.stringify(seen) === JSON.stringify([...ids].sort())
      && rows.every((r) => r.querySelector('.reachable')?.textContent === 'yes'
        && /^\d+$/.test(r.querySelector('.term')?.textContent ?? '')
        && /^\d+$/.test(r.querySelector('.applied')?.textContent ?? ''));
  }, nodes);

  step = 'waiting for the page to name the leader';
  await page.waitForFunction(() => /^\d+$/.test(document.querySelector('#leader-id')?.dataset.leaderId ?? ''));
  const shown = await page.evaluate(() => ({
    leader: document.querySelector('#leader-id').dataset.leaderId,
    summary: document.querySelector('#leader-summary').textContent,
    roles: Object.fromEntries([...document.querySelectorAll('#nodes tbody tr')]
      .map((r) => [r.dataset.nodeId, r.querySelector('.role .badge').dataset.role])),
    servedBy: document.querySelector('#served-by').dataset.nodeId,
  }));
  check(shown.leader === String(config.leader),
    `the page names node ${shown.leader} as leader; the cluster says node ${config.leader}`);
  const leaders = Object.entries(shown.roles).filter(([, role]) => role === 'leader').map(([id]) => id);
  check(leaders.length === 1 && leaders[0] === shown.leader,
    `expected exactly node ${shown.leader} with the leader role, got roles ${JSON.stringify(shown.roles)}`);
  check(Object.entries(shown.roles).every(([id, role]) =>
    id === shown.leader || role === (learners.includes(id) ? 'learner' : 'follower')),
  `the other nodes should be followers and learners: ${JSON.stringify(shown.roles)}`);
  check(/term \d+/.test(shown.summary) && /since/.test(shown.summary),
    `the leader summary gives no term and "since": ${shown.summary}`);
  check(shown.servedBy === pageNode, `the page says it is served by node ${shown.servedBy}, not ${pageNode}`);

  step = 'waiting for a lag chart per node';
  await page.waitForFunction((n) => document.querySelectorAll('#nodes svg.spark polyline').length >= n,
    nodes.length);

  step = 'writing through the SQL editor (Ctrl+Enter, durability sync)';
  await page.selectOption('#durability', 'sync');
  await page.fill('#sql', [
    'CREATE TABLE console_t (id INTEGER PRIMARY KEY, name TEXT, note TEXT);',
    "INSERT INTO console_t(name, note) VALUES ('fiona', NULL), ('<b>declan</b>', 'a;b')",
  ].join('\n'));
  await page.press('#sql', 'Control+Enter');
  await page.waitForFunction(() => /^[1-9]\d*$/.test(document.querySelector('#sql-meta .lsn')?.dataset.lsn ?? ''));
  const write = await page.evaluate(() => ({
    meta: document.querySelector('#sql-meta').textContent,
    blocks: [...document.querySelectorAll('#results .result')].map((b) => b.textContent),
    errors: [...document.querySelectorAll('#results .error')].map((e) => e.textContent),
  }));
  check(write.errors.length === 0, `the write failed: ${write.errors.join('; ')}`);
  check(write.blocks.length === 2, `expected 2 statement results, got ${write.blocks.length}: ${write.blocks}`);
  check(/write, durability sync/.test(write.meta), `the write's answer line: ${write.meta}`);
  check(/2 rows affected/.test(write.blocks[1]), `the insert's result: ${write.blocks[1]}`);
  const writeLsn = Number(await page.getAttribute('#sql-meta .lsn', 'data-lsn'));

  step = 'reading through the SQL editor (Run button, level linearizable)';
  await page.selectOption('#level', 'linearizable');
  await page.fill('#sql', 'SELECT id, name, note FROM console_t ORDER BY id');
  await page.click('#run');
  await page.waitForFunction(() => document.querySelectorAll('#results table.rows tbody tr').length === 2);
  const table = await page.evaluate(() => ({
    head: [...document.querySelectorAll('#results table.rows th')].map((th) => th.textContent),
    cells: [...document.querySelectorAll('#results table.rows tbody tr')]
      .map((tr) => [...tr.cells].map((td) => ({ text: td.textContent, null: td.classList.contains('null') }))),
    injected: document.querySelectorAll('#results b').length,
    meta: document.querySelector('#sql-meta').textContent,
    lsn: Number(document.querySelector('#sql-meta .lsn').dataset.lsn),
  }));
  check(JSON.stringify(table.head) === '["id","name","note"]', `columns: ${JSON.stringify(table.head)}`);
  check(table.cells[0][1].text === 'fiona' && table.cells[0][2].null && table.cells[0][2].text === 'NULL',
    `row 1 should be fiona with a NULL note: ${JSON.stringify(table.cells[0])}`);
  check(table.cells[1][1].text === '<b>declan</b>' && !table.cells[1][2].null && table.cells[1][2].text === 'a;b',
    `row 2 should show the markup as text: ${JSON.stringify(table.cells[1])}`);
  check(table.injected === 0, 'text from the server was inserted as HTML');
  check(/read, level linearizable/.test(table.meta), `the read's answer line: ${table.meta}`);
  check(table.lsn >= writeLsn, `the read's lsn ${table.lsn} is below the write's ${writeLsn}`);

  step = 'showing an SQL error';
  await page.fill('#sql', 'SELECT * FROM no_such_table');
  await page.click('#run');
  await page.waitForFunction(() => /no such table/.test(document.querySelector('#results')?.textContent ?? ''));

  const target = nodes.find((id) => id !== shown.leader && id !== pageNode && !learners.includes(id));
  step = `cancelling the promotion of node ${target}`;
  const promoteButton = `#nodes tbody tr[data-node-id="${target}"] button[data-action="promote"]`;
  await page.click(promoteButton);
  await page.waitForSelector('#confirm[open]');
  const title = await page.textContent('#confirm-title');
  check(title.includes(`node ${target}`), `the dialog's title: ${title}`);
  await page.click('#confirm button[value="cancel"]');
  await page.waitForSelector('#confirm:not([open])', { state: 'attached' });

  // Keel has no users yet: answer these two from the browser's side to see how the page shows
  // a refusal, as the endpoints will answer once an admin permission exists.
  step = 'showing a 401 answer to Promote';
  await page.route('**/admin/promote?*', (route) => route.fulfill({
    status: 401, contentType: 'application/json', body: JSON.stringify({ error: 'credentials required' }),
  }));
  await page.click(promoteButton);
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => {
    const box = document.querySelector('#action-result');
    return !box.hidden && box.classList.contains('error')
      && /HTTP 401 Unauthorized/.test(box.textContent) && /credentials required/.test(box.textContent);
  });
  await page.unroute('**/admin/promote?*');

  step = 'showing a 403 answer to Remove';
  await page.route('**/remove', (route) => route.fulfill({
    status: 403, contentType: 'application/json', body: JSON.stringify({ error: 'needs the admin permission' }),
  }));
  await page.click(`#nodes tbody tr[data-node-id="${target}"] button[data-action="remove"]`);
  await page.waitForSelector('#confirm[open]');
  const removeText = await page.textContent('#confirm-text');
  check(removeText.includes(`Node ${target}`), `the remove dialog: ${removeText}`);
  await page.click('#confirm-ok');
  await page.waitForFunction(() => {
    const box = document.querySelector('#action-result');
    return !box.hidden && /HTTP 403 Forbidden/.test(box.textContent) && /admin permission/.test(box.textContent);
  });
  await page.unroute('**/remove');

  step = 'refusing a learner with a bad id before asking';
  await page.click('.add-learner summary');
  await page.fill('#add-learner-form input[name="id"]', 'four');
  await page.fill('#add-learner-form input[name="raft_addr"]', '127.0.0.1:1');
  await page.fill('#add-learner-form input[name="http_addr"]', '127.0.0.1:2');
  await page.click('#add-learner-form button[type="submit"]');
  await page.waitForFunction(() => /node id must be a positive whole number/
    .test(document.querySelector('#action-result').textContent));
  check(!(await page.isVisible('#confirm[open]')), 'a refused learner still opened the dialog');
  await page.click('.add-learner summary');

  step = `promoting node ${target} through the confirmation dialog`;
  await page.click(promoteButton);
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-ok');
  await page.waitForFunction((id) => {
    const box = document.querySelector('#action-result');
    return !box.hidden && box.classList.contains('ok') && box.textContent.includes(`node ${id} is now the leader`);
  }, target);
  check(promotions.length === 2,
    `expected two promote requests (the 401 and the real one; the cancelled dialog sends none): ${promotions}`);
  await page.waitForFunction((id) => document.querySelector('#leader-id')?.dataset.leaderId === id, target);

  step = 'waiting for the test to kill the leader';
  console.log(`READY_TO_KILL ${target}`);
  const reply = await readLine(timeout);
  check(reply === 'KILLED', `expected KILLED from the test, got ${JSON.stringify(reply)}`);

  step = `waiting for the page to show a leader other than node ${target}, and node ${target} unreachable`;
  await page.waitForFunction((old) => {
    const id = document.querySelector('#leader-id')?.dataset.leaderId ?? '';
    const oldRow = document.querySelector(`#nodes tbody tr[data-node-id="${old}"]`);
    return /^\d+$/.test(id) && id !== old && oldRow?.querySelector('.reachable')?.textContent === 'no';
  }, target);
  const after = await page.evaluate(() => ({
    leader: document.querySelector('#leader-id').dataset.leaderId,
    summary: document.querySelector('#leader-summary').textContent,
    events: document.querySelector('#events').textContent,
  }));
  check(/since \d\d:\d\d:\d\d/.test(after.summary) && !/before/.test(after.summary),
    `a leader the page saw take over should have an exact "since": ${after.summary}`);
  check(after.events.includes(`node ${after.leader} became the leader`), `events: ${after.events}`);
  console.log(`NEW_LEADER ${after.leader}`);

  step = `writing the screenshot to ${config.screenshot}`;
  // Put the earlier query's table back on screen for the picture.
  await page.selectOption('#level', 'none');
  await page.fill('#sql', 'SELECT id, name, note FROM console_t ORDER BY id');
  await page.click('#run');
  await page.waitForFunction(() => document.querySelectorAll('#results table.rows tbody tr').length === 2);
  await page.screenshot({ path: config.screenshot, fullPage: false });

  step = `waiting for the test to kill node ${pageNode}, which served the page`;
  const origin = new URL(page.url()).origin;
  console.log(`READY_TO_KILL_PAGE ${pageNode}`);
  const killed = await readLine(timeout);
  check(killed === 'KILLED', `expected KILLED from the test, got ${JSON.stringify(killed)}`);

  step = 'waiting for the page to say that its node does not answer';
  await page.waitForFunction(() => {
    const banner = document.querySelector('#banner');
    return banner && !banner.hidden && /not answering/.test(banner.textContent)
      && banner.querySelectorAll('#banner-links a').length > 0;
  });

  step = 'waiting for the page to move to a node that answers';
  await page.waitForURL((url) => url.origin !== origin && url.pathname === '/console');
  await page.waitForFunction((gone) => {
    const rows = [...document.querySelectorAll('#nodes tbody tr')];
    const servedBy = document.querySelector('#served-by')?.dataset.nodeId ?? '';
    return /^\d+$/.test(servedBy) && rows.length > 0 && gone.every((id) =>
      rows.find((r) => r.dataset.nodeId === id)?.querySelector('.reachable')?.textContent === 'no');
  }, [pageNode, target]);
  console.log(`MOVED ${await page.getAttribute('#served-by', 'data-node-id')}`);
  console.log('DONE');
} catch (e) {
  console.log(`FAILED ${step}: ${e.message.split('\n')[0]}`);
  console.error(`---- console test failed while ${step}:\n${e.stack}`);
  console.error(`---- the page's console messages (${messages.length}):`);
  for (const m of messages) console.error(m);
  process.exitCode = 1;
} finally {
  lines.close();
  await context?.close().catch(() => {});
  await rm(profile, { recursive: true, force: true }).catch(() => {});
}
