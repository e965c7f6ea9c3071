//! Fuzzes the router's decisions (`ferrogen::router::Table`): an arbitrary
//! sequence of links attached and lost, id blocks delegated, routes
//! announced and withdrawn, and frames routed — the whole life of a router
//! facing hostile neighbours, without I/O. Checks after every step:
//!
//! * nothing panics;
//! * every route points at the link that owns the id — the link attached
//!   with it, or the one its block was delegated to — according to a
//!   reference model kept here (no link can claim, or cut off, another's id);
//! * ADD_ROUTE is accepted exactly when the model says the link owns the id;
//! * a frame from a link is never forwarded back on that link, is only
//!   delivered or forwarded when its `auth_id` and `src_id` route back
//!   through it, and a forward goes to an attached link;
//! * losing a link removes only routes that pointed at it.
//!
//! Input: a byte stream read as operations (first byte of each picks one).

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

use ferrogen::router::{Decision, LinkId, Table};
use ferrogen::wire::control::IdBlock;
use ferrogen::wire::{ContextId, Header};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
}

#[derive(Default)]
struct Model {
    attached: HashMap<ContextId, LinkId>,
    blocks: Vec<(ContextId, ContextId, LinkId)>,
    primaries: Vec<LinkId>,
    stripes: Vec<(LinkId, LinkId)>,
}

impl Model {
    fn owner(&self, id: ContextId) -> Option<LinkId> {
        if let Some(&l) = self.attached.get(&id) {
            return Some(l);
        }
        self.blocks
            .iter()
            .find(|(s, e, _)| (*s..*e).contains(&id))
            .map(|(_, _, l)| *l)
    }
    fn pick(&self, b: u8) -> Option<LinkId> {
        let all: Vec<LinkId> = self
            .primaries
            .iter()
            .copied()
            .chain(self.stripes.iter().map(|(s, _)| *s))
            .collect();
        (!all.is_empty()).then(|| all[b as usize % all.len()])
    }
    fn canonical(&self, l: LinkId) -> LinkId {
        self.stripes
            .iter()
            .find(|(s, _)| *s == l)
            .map(|(_, p)| *p)
            .unwrap_or(l)
    }
}

// Context 7, below 3 and 0; its parent link is attached first.
const ME: ContextId = 7;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    let mut t = Table::new(ME, vec![3, 0], 1 << 16);
    let parent = t.attach(3, true);
    let mut m = Model::default();
    let mut next_id: ContextId = 100;
    let mut blocks_of: HashMap<LinkId, usize> = HashMap::new();
    while let Some(op) = input.u8() {
        match op % 8 {
            0 => {
                let l = t.attach(next_id, false);
                m.attached.insert(next_id, l);
                m.primaries.push(l);
                next_id += 1;
            }
            1 => {
                // A new stream for an id already given out (a reconnect).
                let Some(b) = input.u8() else { break };
                let ids: Vec<ContextId> = m.attached.keys().copied().collect();
                if !ids.is_empty() {
                    let id = ids[b as usize % ids.len()];
                    let l = t.attach(id, false);
                    m.attached.insert(id, l);
                    m.primaries.push(l);
                }
            }
            2 => {
                let Some(b) = input.u8() else { break };
                if let Some(p) = m.pick(b).map(|l| m.canonical(l)) {
                    let s = t.attach_stripe(p).expect("primary attached");
                    m.stripes.push((s, p));
                }
            }
            3 => {
                let Some(b) = input.u8() else { break };
                let Some(l) = m.pick(b) else { continue };
                let before: Vec<(ContextId, LinkId)> = t.routes().collect();
                let lost = t.link_lost(l).expect("attached");
                if let Some(i) = m.stripes.iter().position(|(s, _)| *s == l) {
                    m.stripes.remove(i);
                    assert!(lost.contexts.is_empty());
                } else {
                    m.primaries.retain(|&p| p != l);
                    m.stripes.retain(|(_, p)| *p != l);
                    m.attached.retain(|_, v| *v != l);
                    m.blocks.retain(|(_, _, v)| *v != l);
                }
                let after: Vec<(ContextId, LinkId)> = t.routes().collect();
                for (id, via) in before {
                    if via != l {
                        assert!(after.contains(&(id, via)), "lost {l} took {id} via {via}");
                    }
                }
            }
            4 => {
                let (Some(b), Some(n)) = (input.u8(), input.u8()) else { break };
                let Some(l) = m.pick(b) else { continue };
                let c = m.canonical(l);
                let used = blocks_of.entry(c).or_default();
                match t.reserve_block(l) {
                    Ok(()) => {
                        assert!(*used < t.block_cap());
                        *used += 1;
                        let end = next_id + 1 + ContextId::from(n);
                        assert!(t.delegate(IdBlock { start: next_id, end }, l));
                        m.blocks.push((next_id, end, c));
                        next_id = end;
                    }
                    Err(_) => assert!(*used >= t.block_cap()),
                }
            }
            5 | 6 => {
                let (Some(b), Some(id)) = (input.u8(), input.u16()) else { break };
                let Some(l) = m.pick(b) else { continue };
                let id = ContextId::from(id) % (next_id + 10);
                let c = m.canonical(l);
                if op % 8 == 5 {
                    let ok = t.add_route(id, l).is_ok();
                    let owns = m.owner(id) == Some(c) && id != ME && id != 3 && id != 0;
                    assert_eq!(ok, owns, "ADD_ROUTE {id} from {l}");
                } else {
                    t.del_route(id, l);
                }
            }
            _ => {
                let (Some(b), Some(d), Some(s), Some(a), Some(len)) =
                    (input.u8(), input.u16(), input.u16(), input.u16(), input.u16())
                else {
                    break;
                };
                let ingress = if b % 5 == 0 { Some(parent) } else { m.pick(b) };
                let id = |x: u16| ContextId::from(x) % (next_id + 10);
                let h = Header {
                    enc: 0x4d50,
                    dst_id: id(d),
                    src_id: id(s),
                    auth_id: id(a),
                    handle: 1000,
                    reply_to: 0,
                    len: u32::from(len) * 2,
                };
                let back = ingress.map(|l| if l == parent { l } else { m.canonical(l) });
                let towards = |t: &Table, x: ContextId| t.towards(x);
                let auth_ok = back.is_none_or(|l| towards(&t, h.auth_id) == Some(l));
                let src_ok = back.is_none_or(|l| {
                    h.src_id == h.auth_id || towards(&t, h.src_id) == Some(l)
                });
                match t.route(&h, ingress) {
                    Decision::Forward(out) => {
                        assert!(auth_ok && src_ok);
                        assert_ne!(Some(out), back, "bounced");
                        assert!(t.remote_id(out).is_some(), "forwarded to a lost link");
                        assert_ne!(h.dst_id, ME);
                    }
                    Decision::Deliver => {
                        assert!(auth_ok && src_ok);
                        assert_eq!(h.dst_id, ME);
                    }
                    Decision::Drop(_) => assert!(!(auth_ok && src_ok)),
                    Decision::Dead(_) => {}
                }
            }
        }
        for (id, l) in t.routes() {
            assert_eq!(m.owner(id), Some(l), "route to {id} via {l} not owned");
        }
    }
});
