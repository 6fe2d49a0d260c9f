//! A small authoritative DNS server on a loopback UDP port, for the tests of `keel serve
//! --discovery` (`tests/discovery.rs`): it answers A and SRV queries from a table the test
//! changes while the nodes run, so records can appear over time as an orchestrator's would.
//!
//! Messages are parsed and built with hickory-proto (the wire format is not hand-written); the
//! server itself is one thread answering one datagram at a time. Every answer has TTL 0, so
//! the nodes' resolvers ask again each time. A name with no record of any type is NXDOMAIN; a
//! known name without records of the asked type is an empty NOERROR answer. Only UDP is
//! served: the answers here are far below the UDP size limit.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::lock;

/// The records served, by lower-case name without the final dot.
#[derive(Default)]
struct Table {
    /// A records.
    a: BTreeMap<String, Vec<Ipv4Addr>>,
    /// SRV records: (target, port) each.
    srv: BTreeMap<String, Vec<(String, u16)>>,
}

/// The server; stops when dropped.
pub struct DnsServer {
    /// The UDP address it answers on.
    addr: SocketAddr,
    /// The records, shared with the serving thread.
    table: Arc<Mutex<Table>>,
    /// Set to stop the serving thread.
    stop: Arc<AtomicBool>,
    /// The serving thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds a free loopback UDP port and serves an empty table (every name NXDOMAIN).
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("cannot bind a loopback UDP port");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("cannot set a read timeout");
        let addr = socket.local_addr().expect("bound socket has an address");
        let table = Arc::new(Mutex::new(Table::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &table, &stop))
        };
        Self { addr, table, stop, thread: Some(thread) }
    }

    /// The address to give `--discovery-resolver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the A records of `name` (none: the name has no A records).
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        lock(&self.table).a.insert(key(name), ips.to_vec());
    }

    /// Sets the SRV records of `name`: a (target, port) each.
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        let targets = targets.iter().map(|(t, p)| ((*t).to_string(), *p)).collect();
        lock(&self.table).srv.insert(key(name), targets);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `name` as a table key: lower case, without the final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Answers queries until `stop` is set.
fn serve(socket: &UdpSocket, table: &Mutex<Table>, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
        let Ok(request) = Message::from_vec(&buf[..len]) else { continue };
        let response = answer(&request, &lock(table));
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, from);
        }
    }
}

/// The response to `request` from `table`.
fn answer(request: &Message, table: &Table) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());
    let name = key(&query.name.to_ascii());
    let known = table.a.contains_key(&name) || table.srv.contains_key(&name);
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
        return response;
    }
    match query.query_type {
        RecordType::A => {
            for ip in table.a.get(&name).into_iter().flatten() {
                response.add_answer(Record::from_rdata(query.name.clone(), 0, RData::A(A(*ip))));
            }
        }
        RecordType::SRV => {
            for (target, port) in table.srv.get(&name).into_iter().flatten() {
                let Ok(target) = Name::from_str(&format!("{target}.")) else { continue };
                let srv = SRV::new(0, 0, *port, target);
                response.add_answer(Record::from_rdata(query.name.clone(), 0, RData::SRV(srv)));
            }
        }
        _ => {}
    }
    response
}
