//! Links, addresses and routes through rtnetlink in process: one blocking
//! `NETLINK_ROUTE` socket per network namespace, one request and its
//! acknowledgement (or dump) at a time. A socket belongs to the namespace
//! of the thread that created it, whatever thread uses it later, so a
//! router namespace's socket is opened on a thread that joined it
//! ([`super::in_netns`]) and then used from the caller's thread.
//!
//! Messages are built and parsed with `netlink-packet-route`; each
//! operation mirrors the `ip` command it replaces (named in its comment).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use netbridge_protocol::validate::Ipv4Cidr;

/// A link as the applier needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Index of the bridge (or other controller) it is enslaved to.
    pub master: Option<u32>,
    /// An Ethernet-type link (veth, VLAN, bridge), not loopback.
    pub ether: bool,
    /// The link's group (`ip link set … group`).
    pub group: u32,
}

/// An IPv4 address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub cidr: Ipv4Cidr,
    /// Scope `host` (loopback addresses), never managed by the applier.
    pub host_scope: bool,
}

/// The IPv4 default route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// Largest datagram the kernel sends for one dump part (it sizes them to
/// at most 32 KiB); a bigger buffer costs nothing.
const RECV_BUFFER: usize = 64 * 1024;

/// A `NETLINK_ROUTE` socket of one network namespace.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

/// What a request expects back.
enum Reply {
    Ack,
    Dump,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Dump filters (by controller) are applied by the kernel, and
        // requests with attributes it does not know are refused, not
        // silently half done.
        socket.set_netlink_get_strict_chk(true)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Sends `message` and collects the reply: the dumped messages, or
    /// nothing once the kernel acknowledged the change.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        reply: Reply,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | flags
            | match reply {
                Reply::Ack => NLM_F_ACK,
                Reply::Dump => NLM_F_DUMP,
            };
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let mut found = Vec::new();
        loop {
            self.buffer.clear();
            let n = self.socket.recv(&mut self.buffer, 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buffer[offset..n];
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = parsed.header.length as usize;
                if length == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                // Messages are 4-byte aligned within a datagram.
                offset += (length + 3) & !3;
                if parsed.header.sequence_number != sequence {
                    // A late answer to an abandoned request.
                    continue;
                }
                match parsed.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(found),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::InnerMessage(m) => found.push(m),
                    _ => {}
                }
            }
        }
    }

    fn change(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(message, flags, Reply::Ack).map(|_| ())
    }

    /// `ip link show`: every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        self.dump_links(LinkMessage::default())
    }

    /// `ip link show master <bridge>`: the links enslaved to `master`
    /// (filtered by the kernel).
    pub fn links_of(&mut self, master: u32) -> io::Result<Vec<Link>> {
        let mut filter = LinkMessage::default();
        filter.attributes.push(LinkAttribute::Controller(master));
        // The kernel filters on the controller only; the check below keeps
        // the answer right on a kernel that ignores the filter.
        Ok(self
            .dump_links(filter)?
            .into_iter()
            .filter(|l| l.master == Some(master))
            .collect())
    }

    fn dump_links(&mut self, filter: LinkMessage) -> io::Result<Vec<Link>> {
        let found = self.request(RouteNetlinkMessage::GetLink(filter), 0, Reply::Dump)?;
        Ok(found
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// `ip link show <name>`: `None` when there is no such link.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(query), 0, Reply::Ack) {
            Ok(found) => Ok(found.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ip link add name <name> type bridge` and `ip link set <name> up`,
    /// in one message.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = up(LinkMessage::default());
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// `ip link add <host> type veth peer name <inner> netns <ns> group
    /// <inner_group>`, the host end enslaved to `master` and up, in one
    /// message.
    pub fn add_veth(
        &mut self,
        host: &str,
        inner: &str,
        inner_netns: RawFd,
        inner_group: u32,
        master: u32,
    ) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(inner.to_string()));
        peer.attributes.push(LinkAttribute::NetNsFd(inner_netns));
        peer.attributes.push(LinkAttribute::Group(inner_group));
        let mut m = up(LinkMessage::default());
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Controller(master));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// `ip link add link <parent> name <name> type vlan id <id>`, enslaved
    /// to `master` and up.
    pub fn add_vlan(&mut self, name: &str, parent: u32, id: u16, master: u32) -> io::Result<()> {
        let mut m = up(LinkMessage::default());
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::Link(parent));
        m.attributes.push(LinkAttribute::Controller(master));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// `ip link set <index> [master <master>] up`.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> io::Result<()> {
        let mut m = up(LinkMessage::default());
        m.header.index = index;
        if let Some(master) = master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// `ip link set <index> group <group>`.
    pub fn set_group(&mut self, index: u32, group: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Group(group));
        self.change(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// `ip link del group <group>`: every link of the group goes in one
    /// kernel batch, which waits for RCU once for all of them (a veth
    /// takes its peer along). A group without links is not an error.
    pub fn del_group(&mut self, group: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::Group(group));
        match self.change(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// `ip link del <index>` (a veth takes its peer with it).
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(m), 0)
    }

    /// `ip -4 addr show`: the IPv4 addresses of every link.
    pub fn ipv4_addresses(&mut self) -> io::Result<Vec<Address>> {
        let mut filter = AddressMessage::default();
        filter.header.family = AddressFamily::Inet;
        let found = self.request(RouteNetlinkMessage::GetAddress(filter), 0, Reply::Dump)?;
        Ok(found
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => ipv4_address_of(a),
                _ => None,
            })
            .collect())
    }

    /// `ip addr add <cidr> dev <index>`.
    pub fn add_address(&mut self, index: u32, cidr: &Ipv4Cidr) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::NewAddress(address_message(
                index,
                IpAddr::V4(cidr.addr),
                cidr.prefix,
                AddressHeaderFlags::empty(),
            )),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip addr del <cidr> dev <index>`.
    pub fn del_address(&mut self, index: u32, cidr: &Ipv4Cidr) -> io::Result<()> {
        self.change(
            RouteNetlinkMessage::DelAddress(address_message(
                index,
                IpAddr::V4(cidr.addr),
                cidr.prefix,
                AddressHeaderFlags::empty(),
            )),
            0,
        )
    }

    /// `ip -4 route show default` (main table).
    pub fn default_route(&mut self) -> io::Result<Option<DefaultRoute>> {
        // Not filtered by table: a namespace's main table exists only
        // once a route was added to it, and filtering on a missing table
        // is an error.
        let mut filter = RouteMessage::default();
        filter.header.address_family = AddressFamily::Inet;
        let found = self.request(RouteNetlinkMessage::GetRoute(filter), 0, Reply::Dump)?;
        Ok(found.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => default_route_of(r),
            _ => None,
        }))
    }

    /// `ip route replace default via <gateway> dev <oif> onlink`.
    pub fn replace_default_route(&mut self, gateway: Ipv4Addr, oif: u32) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.header.flags = RouteFlags::Onlink;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.change(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip route del default` (main table).
    pub fn del_default_route(&mut self) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.scope = RouteScope::NoWhere;
        self.change(RouteNetlinkMessage::DelRoute(m), 0)
    }
}

/// A link message that brings the link up.
fn up(mut m: LinkMessage) -> LinkMessage {
    m.header.flags |= LinkFlags::Up;
    m.header.change_mask |= LinkFlags::Up;
    m
}

fn link_of(m: LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        master: None,
        ether: m.header.link_layer_type == LinkLayerType::Ether,
        group: 0,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Group(g) => link.group = g,
            LinkAttribute::Controller(i) if i != 0 => link.master = Some(i),
            _ => {}
        }
    }
    link
}

/// An address message as `ip addr add` sends it: local and peer address
/// the same, scope host only for loopback addresses.
fn address_message(
    index: u32,
    addr: IpAddr,
    prefix: u8,
    flags: AddressHeaderFlags,
) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.header.flags = flags;
    m.header.scope = if addr.is_loopback() {
        AddressScope::Host
    } else {
        AddressScope::Universe
    };
    if addr.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(addr));
    }
    m.attributes.push(AddressAttribute::Address(addr));
    m
}

fn ipv4_address_of(m: AddressMessage) -> Option<Address> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on
    // point-to-point links and the same address elsewhere.
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(IpAddr::V4(v)) => local = Some(*v),
            AddressAttribute::Address(IpAddr::V4(v)) => address = Some(*v),
            _ => {}
        }
    }
    Some(Address {
        index: m.header.index,
        cidr: Ipv4Cidr {
            addr: local.or(address)?,
            prefix: m.header.prefix_len,
        },
        host_scope: m.header.scope == AddressScope::Host,
    })
}

fn default_route_of(m: RouteMessage) -> Option<DefaultRoute> {
    let h = &m.header;
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if h.address_family != AddressFamily::Inet
        || h.destination_prefix_length != 0
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::Unicast
    {
        return None;
    }
    let mut route = DefaultRoute {
        gateway: None,
        oif: None,
    };
    for a in m.attributes {
        match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(g),
            RouteAttribute::Oif(i) => route.oif = Some(i),
            _ => {}
        }
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_is_told_from_other_routes() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                198, 51, 100, 1,
            ))));
        m.attributes.push(RouteAttribute::Oif(7));
        assert_eq!(
            default_route_of(m.clone()),
            Some(DefaultRoute {
                gateway: Some(Ipv4Addr::new(198, 51, 100, 1)),
                oif: Some(7)
            })
        );
        let mut subnet = m.clone();
        subnet.header.destination_prefix_length = 24;
        assert_eq!(default_route_of(subnet), None, "not a default route");
        let mut other_table = m.clone();
        other_table.attributes.push(RouteAttribute::Table(100));
        assert_eq!(default_route_of(other_table), None, "policy table");
        let mut blackhole = m;
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(default_route_of(blackhole), None);
    }

    #[test]
    fn addresses_are_read_from_the_local_attribute() {
        let mut m = address_message(
            3,
            IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)),
            24,
            AddressHeaderFlags::empty(),
        );
        assert_eq!(m.header.scope, AddressScope::Universe);
        assert_eq!(
            ipv4_address_of(m.clone()),
            Some(Address {
                index: 3,
                cidr: Ipv4Cidr {
                    addr: Ipv4Addr::new(10, 1, 1, 1),
                    prefix: 24
                },
                host_scope: false
            })
        );
        // A point-to-point peer in IFA_ADDRESS is not the link's address.
        m.attributes[1] = AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(10, 1, 1, 2)));
        assert_eq!(
            ipv4_address_of(m).map(|a| a.cidr.addr),
            Some(Ipv4Addr::new(10, 1, 1, 1))
        );
        let lo = address_message(
            1,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            8,
            AddressHeaderFlags::empty(),
        );
        assert!(ipv4_address_of(lo).is_some_and(|a| a.host_scope));
    }
}
