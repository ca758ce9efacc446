//! One trigger's dispatcher: its own task, its own cursor over its
//! broker's log.
//!
//! The dispatcher reads records from its position, drops those its filter
//! rejects, and hands the rest to delivery tasks — up to `max_inflight` at
//! once, so one slow subscriber costs its own trigger concurrency but
//! never blocks another trigger (each has its own loop and cursor).
//!
//! Acknowledgement is per event: an offset is done once its subscriber or
//! dead-letter sink took it (or it was filtered out, or dropped after its
//! retries with no sink). The cursor's `committed` is the lowest offset not
//! yet done, so out-of-order completions wait for the slowest one before
//! the cursor moves; a crash redelivers everything from `committed` on
//! (at-least-once). An event whose dead-letter sink also failed is
//! *parked*: recorded in the cursor's `parked` list (which keeps its
//! segment from retention), retried against the sink with capped backoff
//! in its own task, and off the list once the sink takes it; it does not
//! hold `committed` back. The cursor is saved at most every
//! `persist_every`, and on shutdown.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::TriggerDef;
use super::delivery::{Deliverer, Outcome, Sender, Sleeper, TriggerStats};
use super::event::Event;
use super::log::{CursorState, EventLog};

pub struct Dispatcher {
    pub trigger: Arc<TriggerDef>,
    pub log: Arc<dyn EventLog>,
    pub sender: Arc<dyn Sender>,
    pub sleeper: Arc<dyn Sleeper>,
    pub stats: Arc<TriggerStats>,
    pub max_inflight: usize,
    pub persist_every: Duration,
}

enum Done {
    /// Finished for this trigger (delivered, dead-lettered, dropped).
    Finished(u64),
    /// The dead-letter sink failed: park it (the event to re-send).
    Park(u64, Box<Event>),
    /// A parked event is finally taken.
    Unparked(u64),
}

impl Dispatcher {
    /// Runs until `shutdown` turns true; saves the cursor on the way out.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.trigger.cursor_name();
        let deliverer = Arc::new(Deliverer {
            sender: self.sender.clone(),
            sleeper: self.sleeper.clone(),
            subscriber: self.trigger.subscriber.clone(),
            policy: self.trigger.delivery.clone(),
            stats: self.stats.clone(),
            trigger: name.clone(),
        });
        let mut cursor = match self.log.load_cursor(&name).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                // A new trigger sees events from its creation on, as in
                // Knative; the position is saved at once so a restart
                // does not move it.
                let c = CursorState {
                    committed: self.log.end(),
                    parked: Vec::new(),
                };
                if let Err(e) = self.log.store_cursor(&name, &c).await {
                    tracing::error!(trigger = %name, error = %e, "saving the new cursor failed");
                }
                c
            }
            Err(e) => {
                tracing::error!(trigger = %name, error = %e, "cannot load the cursor; trigger not started");
                return;
            }
        };
        tracing::info!(trigger = %name, from = cursor.committed, parked = cursor.parked.len(), "dispatcher started");

        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut parked: BTreeSet<u64> = cursor.parked.iter().copied().collect();
        // Parked events from before a restart: their dead-letter retries
        // resume. The error extensions are rebuilt from the original event
        // (the status of the last failure is not kept across restarts).
        for off in parked.clone() {
            match self.log.read(off, 1).await {
                Ok(recs) if recs.first().is_some_and(|r| r.offset == off) => {
                    if let Ok(ev) = Event::decode(&recs[0].payload) {
                        let mut dead = ev;
                        dead.set("knativeerrordest", self.trigger.subscriber.uri.as_str());
                        let d = deliverer.clone();
                        tasks.spawn(async move {
                            d.retry_parked(&dead).await;
                            Done::Unparked(off)
                        });
                        continue;
                    }
                    parked.remove(&off);
                }
                _ => {
                    tracing::error!(trigger = %name, offset = off, "parked event no longer in the log");
                    parked.remove(&off);
                }
            }
        }

        let mut done: BTreeSet<u64> = BTreeSet::new();
        let mut next = cursor.committed;
        let mut in_flight = 0usize;
        let mut end_rx = self.log.watch_end();
        let mut dirty = false;
        let mut persisting: Option<tokio::task::JoinHandle<()>> = None;
        let mut tick = tokio::time::interval(self.persist_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // Fill the window from the log.
            while in_flight < self.max_inflight && next < *end_rx.borrow_and_update() {
                let recs = match self.log.read(next, self.max_inflight - in_flight).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(trigger = %name, error = %e, "reading the log failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                };
                let Some(first) = recs.first() else { break };
                if first.offset > next {
                    tracing::error!(
                        trigger = %name,
                        from = next,
                        to = first.offset,
                        "events removed by retention before this trigger finished them"
                    );
                    done.extend(next..first.offset);
                }
                for r in recs {
                    next = r.offset + 1;
                    let ev = match Event::decode(&r.payload) {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::error!(trigger = %name, offset = r.offset, error = %e, "undecodable record skipped");
                            done.insert(r.offset);
                            continue;
                        }
                    };
                    if !self.trigger.filter.matches(&ev) {
                        done.insert(r.offset);
                        continue;
                    }
                    in_flight += 1;
                    let d = deliverer.clone();
                    let log = self.log.clone();
                    let off = r.offset;
                    tasks.spawn(async move {
                        match d.deliver(&ev).await {
                            Outcome::Delivered(Some(reply)) => {
                                // A reply goes back into the broker; the
                                // event is done either way (the subscriber
                                // took it).
                                if let Err(e) = log.append(vec![reply.encode()]).await {
                                    tracing::error!(error = %e, "storing a reply event failed");
                                }
                                Done::Finished(off)
                            }
                            Outcome::Parked(dead) => Done::Park(off, Box::new(dead)),
                            _ => Done::Finished(off),
                        }
                    });
                }
            }

            let before = cursor.committed;
            while done.remove(&cursor.committed) {
                cursor.committed += 1;
            }
            dirty |= cursor.committed != before;
            self.stats.set_lag(self.log.end(), cursor.committed);

            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        Ok(Done::Finished(off)) => {
                            in_flight -= 1;
                            done.insert(off);
                        }
                        Ok(Done::Park(off, dead)) => {
                            in_flight -= 1;
                            done.insert(off);
                            parked.insert(off);
                            dirty = true;
                            let d = deliverer.clone();
                            tasks.spawn(async move {
                                d.retry_parked(&dead).await;
                                Done::Unparked(off)
                            });
                        }
                        Ok(Done::Unparked(off)) => {
                            parked.remove(&off);
                            dirty = true;
                        }
                        Err(e) => {
                            // A delivery task panicked: its offset stays
                            // unfinished, so the event is redelivered after
                            // a restart rather than lost.
                            tracing::error!(trigger = %name, error = %e, "delivery task failed");
                            in_flight = in_flight.saturating_sub(1);
                        }
                    }
                }
                changed = end_rx.changed() => {
                    if changed.is_err() {
                        tracing::warn!(trigger = %name, "the log closed; dispatcher stops");
                        break;
                    }
                }
                _ = tick.tick() => {
                    let idle = persisting.as_ref().is_none_or(|h| h.is_finished());
                    if dirty && idle {
                        dirty = false;
                        let state = CursorState {
                            committed: cursor.committed,
                            parked: parked.iter().copied().collect(),
                        };
                        let log = self.log.clone();
                        let n = name.clone();
                        persisting = Some(tokio::spawn(async move {
                            if let Err(e) = log.store_cursor(&n, &state).await {
                                tracing::error!(trigger = %n, error = %e, "saving the cursor failed");
                            }
                        }));
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        tasks.abort_all();
        if let Some(h) = persisting.take() {
            let _ = h.await;
        }
        cursor.parked = parked.into_iter().collect();
        if let Err(e) = self.log.store_cursor(&name, &cursor).await {
            tracing::error!(trigger = %name, error = %e, "saving the cursor at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests;
