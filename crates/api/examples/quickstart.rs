//! Writes and reads a table through a Keel cluster.
//!
//! ```sh
//! keel local &                     # three nodes on 127.0.0.1:4001, :4003, :4005
//! cargo run -p keel-api --example quickstart -- http://127.0.0.1:4001 http://127.0.0.1:4003
//! ```
//!
//! The client finds the leader among the URLs given (and the members they name), sends the
//! writes there with a request id each, and reads back on the first node at `level=none` once
//! it has applied the last write (`min_lsn`).

use keel_api::{Client, Durability, Level, Statement};

#[tokio::main]
async fn main() -> Result<(), keel_api::Error> {
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls.push("http://127.0.0.1:4001".to_string());
    }
    let client = Client::new(&urls)?;
    client
        .execute(["CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT)"])
        .await?;
    let written = client
        .write(
            ["fiona", "declan", "aoife"]
                .map(|name| Statement::new("INSERT INTO people(name) VALUES(?)").bind(name)),
        )
        .transaction()
        .durability(Durability::SemiSync)
        .send()
        .await?;
    println!("written at lsn {:?} by {:?}", written.lsn, written.served_by);
    let read = client
        .read(["SELECT id, name FROM people ORDER BY id DESC LIMIT 3"])
        .level(Level::None)
        .min_lsn(written.lsn.unwrap_or(0))
        .associative()
        .send()
        .await?;
    for row in read.results[0].assoc_rows() {
        println!("{row:?}");
    }
    println!("leader: {:?}", client.leader_known());
    Ok(())
}
