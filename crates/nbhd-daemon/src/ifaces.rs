//! Which interfaces presence runs on: every up, non-loopback interface with an IPv4 address, or
//! exactly those named with `--iface`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nbhd_proto::node::IfaceAddr;

use crate::error::DaemonError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub addrs: Vec<Ipv4Addr>,
    /// The same addresses with their prefix lengths (the on-link check of RFC 6762 §11).
    pub subnets: Vec<IfaceAddr>,
}

/// Lists the interfaces to use now. Named interfaces that do not exist are a usage error.
pub fn select(wanted: &[String]) -> Result<Vec<Iface>, DaemonError> {
    let all = if_addrs::get_if_addrs().map_err(|e| DaemonError::other("listing interfaces", e))?;
    let mut by_name: BTreeMap<String, Iface> = BTreeMap::new();
    for i in &all {
        let Some(index) = i.index else { continue };
        let entry = by_name.entry(i.name.clone()).or_insert_with(|| Iface {
            name: i.name.clone(),
            index,
            addrs: vec![],
            subnets: vec![],
        });
        if let if_addrs::IfAddr::V4(v4) = &i.addr {
            entry.addrs.push(v4.ip);
            let prefix = u32::from(v4.netmask).leading_ones() as u8;
            entry.subnets.push(IfaceAddr::new(v4.ip, prefix));
        }
    }
    if wanted.is_empty() {
        return Ok(by_name
            .into_values()
            .filter(|i| !i.addrs.is_empty() && i.addrs.iter().all(|a| !a.is_loopback()))
            .collect());
    }
    let mut out = Vec::new();
    for w in wanted {
        match by_name.get(w) {
            Some(i) => out.push(i.clone()),
            None => {
                let known: Vec<&str> = by_name.keys().map(String::as_str).collect();
                return Err(DaemonError::Usage(format!(
                    "unknown interface {w:?} (this host has: {}); pick one with --iface",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(out)
}
