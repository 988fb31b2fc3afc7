//! The bridge's failover journal replays, on a new host, only the commands
//! its compaction kept. Property: for any sequence of commands the executor
//! accepted, replaying the compacted journal gives the same executor state
//! (desired network state and VM data) as replaying the whole sequence.
//! Both run through the executor's pure transitions
//! (`netbridge_executor::transition`), so no namespace, process or root is
//! needed. The universe is small on purpose (one network, two public
//! addresses, three VMs whose addresses share a prefix, two ports in several
//! spellings), so that commands keep hitting the same objects.

use netbridge_control::dispatch::JournalState;
use netbridge_executor::services::VmDataSet;
use netbridge_executor::state::{NetworkState, Transition};
use netbridge_executor::transition::{self, Defaults};
use netbridge_protocol::envelope::Envelope;
use netbridge_protocol::payload::NetworkRequest;
use netbridge_protocol::Command;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Value};

const DEFAULTS: Defaults<'static> = Defaults {
    guest_device: "eth1",
    public_device: "eth2",
};

/// The executor's state of one network, as the pure transitions keep it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Executor {
    state: Option<NetworkState>,
    vms: VmDataSet,
}

impl Executor {
    /// What a new host holds: an unimplemented network with no record is
    /// the same as none (the executor makes one for a removal it is sent
    /// about a network it does not hold).
    ///
    /// KNOWN DIVERGENCE, left out of the comparison: whether DHCP and DNS
    /// are on. NIC and DNS entry commands turn the service on in the
    /// executor, and neither their removal nor `remove-*-subnet` is kept by
    /// the journal, so after e.g. `prepare-nic`, `release-nic` the host has
    /// DHCP on and a replay has it off (and after `prepare-nic`,
    /// `remove-dhcp-subnet` the other way round).
    fn observable(&self) -> (Option<NetworkState>, VmDataSet) {
        let env = Envelope::parse(br#"{"payload": {"network_id": "42"}}"#).expect("envelope");
        let empty = transition::unheld(&env, DEFAULTS.guest_device).expect("empty state");
        let state = self
            .state
            .clone()
            .map(|mut s| {
                // Forwards and static NATs never overlap (the executor
                // refuses overlapping forwards), so their order changes no
                // traffic; a changed forward moves to the end in the
                // executor but keeps its first place in the journal.
                s.port_forwards.sort();
                s.static_nats.sort();
                s.guest.dhcp_enabled = false;
                s.guest.dns_enabled = false;
                s
            })
            .filter(|s| *s != empty);
        (state, self.vms.clone())
    }

    /// Runs one command; `false` if the executor refused it (the bridge
    /// records only what succeeded).
    fn run(&mut self, command: Command, envelope: &Value) -> bool {
        let Ok(env) = Envelope::parse(envelope.to_string().as_bytes()) else {
            return false;
        };
        match NetworkRequest::parse(command, &env) {
            Ok(Some(req)) => {
                match transition::network_command(self.state.as_ref(), &req, &env, DEFAULTS) {
                    Ok((_, Transition::Forget)) => {
                        self.state = None;
                        self.vms = VmDataSet::default();
                    }
                    // A shutdown of a network never held keeps nothing.
                    Ok((_, Transition::TearDown)) if self.state.is_none() => {}
                    Ok((next, _)) => self.state = Some(next),
                    Err(_) => return false,
                }
                true
            }
            Ok(None) => {
                let mut vms = self.vms.clone();
                match transition::guest_command(
                    self.state.as_ref(),
                    &mut vms,
                    command,
                    &env,
                    DEFAULTS,
                ) {
                    Ok(next) => {
                        self.state = Some(next);
                        self.vms = vms;
                        true
                    }
                    Err(_) => false,
                }
            }
            Err(_) => false,
        }
    }
}

const PUBLIC: [&str; 2] = ["203.0.113.10", "203.0.113.11"];
/// Addresses sharing a prefix catch slot prefixes that over-match.
const VMS: [(&str, &str, &str); 3] = [
    ("10.1.1.5", "02:00:00:00:00:05", "vm-a"),
    ("10.1.1.50", "02:00:00:00:00:50", "vm-b"),
    ("10.1.1.6", "02:00:00:00:00:06", "vm-c"),
];

fn command(op: u8, a: usize, b: usize, c: usize) -> (Command, Value) {
    let ip = PUBLIC[a % 2];
    let (vm_ip, mac, host) = VMS[b % 3];
    let mut p = json!({"network_id": "42"});
    let o = p.as_object_mut().expect("object");
    let mut set = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    let cmd = match op {
        0 => {
            set("cidr", json!("10.1.1.0/24"));
            set("gateway", json!("10.1.1.1"));
            set("vlan", json!("vlan://100"));
            let dns = ["8.8.8.8", "1.1.1.1"][c % 2];
            set("dns", json!(dns));
            Command::ImplementNetwork
        }
        1 => Command::ShutdownNetwork,
        2 => Command::DestroyNetwork,
        3 => {
            set("public_ip", json!(ip));
            set("public_cidr", json!(format!("{ip}/24")));
            set("public_vlan", json!("vlan://200"));
            set("source_nat", json!(c % 2 == 0));
            Command::AssignIp
        }
        4 => {
            set("public_ip", json!(ip));
            Command::ReleaseIp
        }
        5 => {
            set("public_ip", json!(ip));
            set("private_ip", json!(vm_ip));
            Command::AddStaticNat
        }
        6 => {
            set("public_ip", json!(ip));
            Command::DeleteStaticNat
        }
        7 | 8 => {
            set("public_ip", json!(ip));
            let port = ["80", "080", "8080-8081"][c % 3];
            set("public_port", json!(port));
            if c % 3 == 2 {
                set("private_port", json!("80-81"));
            }
            match c % 4 {
                0 => {}
                1 => set("protocol", json!("tcp")),
                2 => set("protocol", json!("TCP")),
                _ => set("protocol", json!("udp")),
            }
            set("private_ip", json!(vm_ip));
            if op == 7 {
                Command::AddPortForward
            } else {
                Command::DeletePortForward
            }
        }
        9 => {
            // KNOWN DIVERGENCE (not generated): an ingress rule naming a
            // public address, because `release-ip` also prunes the
            // address's ingress rules from the executor's firewall while
            // the journal keeps the firewall document as it was sent.
            let rules = match c % 2 {
                0 => json!([]),
                _ => json!([{"type": "egress", "protocol": "tcp", "portStart": "443"}]),
            };
            set(
                "fw_rules",
                json!({"default_egress_allow": true, "rules": rules}),
            );
            Command::ApplyFwRules
        }
        10 => {
            set("ip", json!(vm_ip));
            set("hostname", json!(host));
            Command::AddDnsEntry
        }
        11 => {
            set("ip", json!(vm_ip));
            Command::RemoveDnsEntry
        }
        12 => Command::ConfigDnsSubnet,
        13 => Command::RemoveDnsSubnet,
        14 => Command::ConfigDhcpSubnet,
        15 => Command::RemoveDhcpSubnet,
        16 | 17 => {
            set("ip", json!(vm_ip));
            set("mac", json!(mac));
            // KNOWN DIVERGENCES (not generated): NICs carry no hostname
            // and keep their MAC. `prepare-nic` with a hostname also sets
            // the address's DNS record, which the journal files under the
            // NIC only (a later `remove-dns-entry` comes back on a
            // replay); `prepare-nic` and `add-dhcp-entry` define the same
            // NIC in the executor (by MAC) but two journal objects, so
            // differing fields replay in the wrong order; a MAC moving to
            // an address another MAC took is not compacted by either key.
            if op == 16 {
                Command::PrepareNic
            } else {
                Command::AddDhcpEntry
            }
        }
        18 => {
            set("ip", json!(vm_ip));
            set("mac", json!(mac));
            Command::RemoveDhcpEntry
        }
        19 => {
            set("ip", json!(vm_ip));
            set("mac", json!(mac));
            Command::ReleaseNic
        }
        20 => {
            set("ip", json!(vm_ip));
            let data = ["I2Nsb3VkLWNvbmZpZwo=", "dXNlcmRhdGEK"][c % 2];
            set("userdata", json!(data));
            Command::SaveUserdata
        }
        21 => {
            set("ip", json!(vm_ip));
            let id = ["i-1", "i-2", "i-3"][c % 3];
            set(
                "vm_data",
                json!([{"dir": "metadata", "file": "instance-id", "content": id}]),
            );
            Command::SaveVmData
        }
        _ => {
            set("ip", json!(vm_ip));
            let name = ["kvm-1", "kvm-2"][c % 2];
            set("hypervisor_hostname", json!(name));
            Command::SaveHypervisorHostname
        }
    };
    (cmd, json!({"network-extension-details": {}, "payload": p}))
}

/// Commands left out of the universe because the journal's compaction and
/// the executor's state are known to disagree on them: none beyond the
/// service flags [`Executor::observable`] leaves out.
const KNOWN_DIVERGENT: &[u8] = &[];

fn ops() -> impl Strategy<Value = Vec<(u8, usize, usize, usize)>> {
    let op = (0u8..23).prop_filter("known divergence", |op| !KNOWN_DIVERGENT.contains(op));
    prop::collection::vec((op, 0usize..2, 0usize..3, 0usize..6), 0..40)
}

proptest! {
    #![proptest_config(Config {
        cases: 400,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6e62_7264),
        ..Config::default()
    })]

    #[test]
    fn replaying_the_compacted_journal_gives_the_full_sequences_state(ops in ops()) {
        // The host that ran everything decides what is accepted, and so
        // what the bridge records.
        let mut host = Executor::default();
        let mut journal = JournalState::default();
        // The full sequence since the last teardown: a shut-down or
        // destroyed network starts over (CloudStack implements it again
        // with every rule), which is what the journal keeps too.
        let mut since_teardown: Vec<(Command, Value)> = Vec::new();
        for (op, a, b, c) in ops {
            let (command, envelope) = command(op, a, b, c);
            if host.run(command, &envelope) {
                journal.apply(command, &envelope);
                if matches!(command, Command::ShutdownNetwork | Command::DestroyNetwork) {
                    since_teardown.clear();
                } else {
                    since_teardown.push((command, envelope));
                }
            }
        }
        let names: Vec<Command> = since_teardown.iter().map(|(c, _)| *c).collect();
        let mut full = Executor::default();
        for (command, envelope) in &since_teardown {
            prop_assert!(full.run(*command, envelope), "{} refused; sequence {:?}", command, names);
        }
        let mut replayed = Executor::default();
        for entry in &journal.entries {
            let command: Command = entry.command.parse().expect("journaled command");
            prop_assert!(
                replayed.run(command, &entry.envelope),
                "replaying {} was refused; sequence {:?}", entry.command, names
            );
        }
        prop_assert_eq!(replayed.observable(), full.observable(), "sequence {:?}", names);
    }
}
