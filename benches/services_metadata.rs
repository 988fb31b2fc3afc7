//! Metadata requests per second served by the executor's metadata server,
//! from clients inside one network namespace (needs root; prints a skip line
//! otherwise). Two figures: keep-alive connections, and one connection per
//! request (what `curl` in a guest does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netbridge_executor::services::metadata::{ListenSpec, MetadataServer};
use netbridge_executor::services::model::{apply, GuestServices, Options};
use netbridge_executor::services::store::MetadataStore;
use netbridge_protocol::Command as Cmd;
use serde_json::json;

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?}");
}

fn connect_in(ns: &str, addr: SocketAddr) -> TcpStream {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: per-thread setns on a valid namespace fd.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            TcpStream::connect(addr).expect("connect")
        })
        .join()
        .expect("join")
    })
}

/// Reads one HTTP/1.1 response; returns the body length.
fn read_response(r: &mut BufReader<TcpStream>) -> usize {
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return 0;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("body");
    len
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("services_metadata: skipped (needs root for a network namespace)");
        return;
    }
    let ns = Ns(format!("nbs-{}-bench", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&["-n", &ns.0, "addr", "add", "10.1.1.1/32", "dev", "lo"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(MetadataStore::open(dir.path().join("vmdata"), None).expect("store"));
    let mut g = GuestServices::default();
    store
        .update(|vms| {
            apply(
                Cmd::SaveVmData,
                json!({"ip":"10.1.1.1","vm_data":[
                {"dir":"metadata","file":"instance-id","content":"i-2-10-VM"},
                {"dir":"userdata","file":"user-data","content":"#cloud-config\n"}]})
                .as_object()
                .expect("obj"),
                &mut g,
                vms,
                &Options::default(),
            )
        })
        .expect("save");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = MetadataServer::start(
        rt.handle(),
        &ListenSpec::new(Some(&ns.0), Ipv4Addr::new(10, 1, 1, 1)),
        store,
    )
    .expect("server");
    let addr = server.metadata_addr;

    for clients in [1usize, 4] {
        let run_for = Duration::from_secs(3);
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let ns = ns.0.clone();
                std::thread::spawn(move || {
                    let s = connect_in(&ns, addr);
                    let mut w = s.try_clone().expect("clone");
                    let mut r = BufReader::new(s);
                    let mut n = 0u64;
                    while start.elapsed() < run_for {
                        w.write_all(
                            b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: m\r\n\r\n",
                        )
                        .expect("write");
                        assert_eq!(read_response(&mut r), 9);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        println!(
            "metadata keep-alive, {clients} client(s): {:.0} requests/s",
            total as f64 / start.elapsed().as_secs_f64()
        );
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let s = connect_in(&ns.0, addr);
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        w.write_all(b"GET /latest/user-data HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(&mut r), 14);
        n += 1;
    }
    println!(
        "metadata one connection per request, 1 client: {:.0} requests/s",
        n as f64 / start.elapsed().as_secs_f64()
    );
    rt.block_on(server.shutdown());
}
