//! Each evaluating thread's own reference to the current data set of the clients it uses, so
//! that an evaluation costs one atomic load (the data's generation) instead of an `ArcSwap`
//! load and release: nothing shared is written on the hot path, and any number of threads
//! evaluate without touching each other's cache lines.
//!
//! Freshness is unchanged: the generation is bumped after every swap of the data, and a thread
//! whose reference is of an older generation loads the current data before evaluating.
//! Memory: a thread holds the data set it last used for up to [`SLOTS`] clients, so an old data
//! set is freed once every thread that used it has evaluated that client again, filled the
//! slot with another client, or exited.

use std::cell::RefCell;
use std::sync::Arc;

use crate::data_set::DataSet;
use crate::shared::Shared;

/// Clients a thread keeps a reference for; more, used in turn from one thread, still work
/// (each miss loads from the client's `ArcSwap`).
pub(crate) const SLOTS: usize = 4;

struct Slot {
    /// [`Shared::id`] (0: empty; ids start at 1).
    client: u64,
    generation: u64,
    data: Option<Arc<DataSet>>,
}

struct Cache {
    slots: [Slot; SLOTS],
    /// The slot to fill on the next miss (round robin).
    next: usize,
}

const EMPTY: Slot = Slot {
    client: 0,
    generation: 0,
    data: None,
};

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache { slots: [EMPTY; SLOTS], next: 0 })
    };
}

impl Cache {
    fn current(&mut self, shared: &Shared) -> Option<&DataSet> {
        // Read before loading: the data loaded is at least as new as this generation.
        let generation = shared.generation();
        let i = match self.slots.iter().position(|s| s.client == shared.id) {
            Some(i) if self.slots[i].generation == generation => {
                return self.slots[i].data.as_deref();
            }
            Some(i) => i,
            None => {
                let i = self.next;
                self.next = (i + 1) % SLOTS;
                self.slots[i].client = shared.id;
                i
            }
        };
        let slot = &mut self.slots[i];
        slot.generation = generation;
        slot.data = shared.data.load_full();
        slot.data.as_deref()
    }
}

/// Runs `f` on the current data of `shared` (`None`: no data), through this thread's
/// reference when it is current. Falls back to a plain `ArcSwap` load when the cache cannot
/// be used (re-entered from `f`, or the thread is being torn down).
#[inline]
pub(crate) fn with_data<R>(shared: &Shared, f: impl FnOnce(Option<&DataSet>) -> R) -> R {
    let mut f = Some(f);
    let cached = CACHE.try_with(|cell| {
        let mut cache = cell.try_borrow_mut().ok()?;
        let data = cache.current(shared);
        f.take().map(|f| f(data))
    });
    if let Ok(Some(r)) = cached {
        return r;
    }
    let guard = shared.data.load();
    match f {
        Some(f) => f(guard.as_deref()),
        // `f` is taken only on the cached path, which then returned.
        None => unreachable!("the cached path ran the evaluation"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use flagstaff_flags::Context;
    use serde_json::json;

    fn shared_with(on: bool) -> Shared {
        let s = Shared::new(Config::new("ns", "key"));
        install(&s, on);
        s
    }

    fn install(s: &Shared, on: bool) {
        let doc = json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
                                         "defaultVariant": if on { "on" } else { "off" }}}});
        s.install_initial(
            DataSet::from_flagd_document(&doc, &crate::config::Limits::default()).unwrap(),
            None,
        );
    }

    fn eval(s: &Shared) -> Option<bool> {
        with_data(s, |d| {
            d.map(|d| d.flags.boolean("f", &Context::new(0), false).value)
        })
    }

    #[test]
    fn a_thread_sees_every_new_data_set_at_its_next_evaluation() {
        let s = Shared::new(Config::new("ns", "key"));
        assert_eq!(eval(&s), None);
        for i in 0..20 {
            install(&s, i % 2 == 0);
            assert_eq!(eval(&s), Some(i % 2 == 0), "after install {i}");
            assert_eq!(eval(&s), Some(i % 2 == 0), "cached, after install {i}");
        }
        // Another thread, holding its own reference, sees the swap too.
        std::thread::scope(|t| {
            t.spawn(|| assert_eq!(eval(&s), Some(false)));
        });
        install(&s, true);
        std::thread::scope(|t| {
            t.spawn(|| assert_eq!(eval(&s), Some(true)));
        });
    }

    #[test]
    fn more_clients_than_slots_on_one_thread_never_mix_their_data() {
        let clients: Vec<Shared> = (0..SLOTS * 2 + 1)
            .map(|i| shared_with(i % 3 == 0))
            .collect();
        for round in 0..3 {
            for (i, c) in clients.iter().enumerate() {
                assert_eq!(eval(c), Some(i % 3 == 0), "client {i}, round {round}");
            }
        }
        install(&clients[1], true);
        assert_eq!(eval(&clients[1]), Some(true));
        assert_eq!(eval(&clients[0]), Some(true));
        assert_eq!(eval(&clients[2]), Some(false));
    }

    #[test]
    fn nested_use_falls_back_to_a_direct_load() {
        let a = shared_with(true);
        let b = shared_with(false);
        let nested = with_data(&a, |da| {
            let inner = eval(&b);
            (da.is_some(), inner)
        });
        assert_eq!(nested, (true, Some(false)));
        assert_eq!(eval(&b), Some(false));
    }
}
