//! The store's prune lock: one prune at a time per store, across machines, with a heartbeat so
//! that a prune that died (SIGKILL, a lost node) blocks the next one for minutes, not hours.
//!
//! The store offers create-if-absent, get, list and delete, and no compare-and-swap, so:
//! - the lock is `prune/lock`, created if absent; it names its holder, a random nonce and the
//!   holder's heartbeat period;
//! - the holder refreshes it every period by creating `prune/lock-beats/<nonce>/<seq>` (its own
//!   clock's time inside) and deleting the beat before;
//! - a lock whose newest beat (or, before the first, the lock itself) is older than
//!   [`STALE_BEATS`] periods is stale. A taker first creates `prune/lock-breaks/<nonce>`: of
//!   several takers of one stale lock only the one that created it goes on, re-reads the lock
//!   (it may have been released and taken again meanwhile) and only then deletes and retakes it.
//!
//! # Guarantees
//! - A lock whose holder keeps beating is never taken over, however long its prune runs.
//! - Of several prunes that find one stale lock at once, one takes it; the others are refused.
//! - A lock written without heartbeats (by a berth before them) is taken over only after
//!   [`LEGACY_STALE_SECS`], as then; and such a berth respects a lock written here, as one
//!   younger than that.
//!
//! # Assumptions
//! - The clocks of the machines that prune one store agree to well within [`STALE_BEATS`]
//!   heartbeat periods (2 minutes by default): staleness compares the holder's clock with the
//!   taker's.
//!
//! # Caveats
//! - A holder that stops for longer than the stale window (a paused VM) and then resumes could
//!   overlap with the prune that took over. The holder checks, before it applies its plan and
//!   before it releases, that its last beat is recent and its lock was not broken
//!   ([`PruneLock::check`]), which leaves only a pause inside the apply itself.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_core::layout;
use berth_core::time::Timestamp;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::create::now;
use crate::error::{EngineError, Result};
use crate::snapshot_store::SnapshotStore;
use crate::store::{DynStore, Put, StoreError};

/// How often a prune refreshes its lock, unless told otherwise.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// A lock not refreshed for this many of its holder's heartbeat periods is taken over.
pub const STALE_BEATS: i64 = 6;

/// A lock written without a heartbeat period (older berth) is taken over after this long.
pub const LEGACY_STALE_SECS: i64 = 6 * 3600;

/// Break markers older than this are deleted by the next holder.
const BREAK_MARKER_SECS: i64 = 24 * 3600;

/// Test hook: with `BERTH_TEST_PAUSE_PRUNE=1`, a prune stops for good once it holds the lock
/// and has planned (still beating), so a test can kill it at that point.
pub const PAUSE_PRUNE_ENV: &str = "BERTH_TEST_PAUSE_PRUNE";

/// What the lock object says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LockInfo {
    host: String,
    pid: u32,
    time: Timestamp,
    /// Names this holding: its beats and a takeover's marker live under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    /// The holder's heartbeat period; absent: a holder that does not beat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heartbeat_secs: Option<u64>,
}

/// A beat object: when the holder wrote it, by its clock.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    time: Timestamp,
}

/// When a lock stops being live: `beats` periods after its newest sign of life (a lock without
/// a heartbeat period: [`LEGACY_STALE_SECS`] after it was taken).
fn stale_at(info: &LockInfo, last_beat: Option<Timestamp>) -> Timestamp {
    match info.heartbeat_secs {
        Some(secs) => {
            let alive = last_beat.map_or(info.time, |b| b.max(info.time));
            alive.plus_secs((secs.max(1) as i64).saturating_mul(STALE_BEATS))
        }
        None => info.time.plus_secs(LEGACY_STALE_SECS),
    }
}

/// The name a takeover of `info` (read as `raw`) claims: its nonce, or for a lock without one
/// a hash of its bytes.
fn holding_name(info: Option<&LockInfo>, raw: &[u8]) -> String {
    match info.and_then(|i| i.nonce.clone()) {
        Some(nonce) => nonce,
        None => format!("legacy-{}", &blake3::hash(raw).to_hex()[..32]),
    }
}

/// The prune lock, held while a prune plans and applies; it beats on a task of its own until
/// [`PruneLock::release`] (or drop, which leaves the lock to go stale).
#[derive(Debug)]
pub struct PruneLock {
    objects: DynStore,
    nonce: String,
    heartbeat: Duration,
    /// The time (ns) of the last beat that was written, or of the acquisition.
    last_beat: Arc<AtomicI64>,
    beats: tokio::task::JoinHandle<()>,
}

impl Drop for PruneLock {
    fn drop(&mut self) {
        self.beats.abort();
    }
}

impl PruneLock {
    /// Takes the prune lock, refreshed every `heartbeat`; takes over a stale one; or says who
    /// holds it.
    pub async fn acquire(store: &SnapshotStore, host: &str, heartbeat: Duration) -> Result<PruneLock> {
        let objects = store.objects().clone();
        let nonce = random_nonce();
        let heartbeat = heartbeat.max(Duration::from_secs(1));
        let info = LockInfo {
            host: host.to_string(),
            pid: std::process::id(),
            time: now(),
            nonce: Some(nonce.clone()),
            heartbeat_secs: Some(heartbeat.as_secs()),
        };
        let bytes = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
        for _ in 0..3 {
            if objects.put_if_absent(layout::PRUNE_LOCK, bytes.clone()).await? == Put::Created {
                let lock = PruneLock::start(objects, nonce, heartbeat, info.time);
                lock.clean_leftovers().await;
                return Ok(lock);
            }
            let Some(raw) = get_optional(&objects, layout::PRUNE_LOCK).await? else { continue };
            let held = serde_json::from_slice::<LockInfo>(&raw).ok();
            if let Some(h) = &held {
                let last = last_beat(&objects, h).await?;
                if stale_at(h, last) > now() {
                    return Err(EngineError::Conflict(format!(
                        "another prune holds {} since {} (host {}, pid {}, last sign of life {}); wait for it{}",
                        layout::PRUNE_LOCK,
                        h.time,
                        h.host,
                        h.pid,
                        last.unwrap_or(h.time),
                        if h.heartbeat_secs.is_some() {
                            ", it is taken over once it misses its heartbeats"
                        } else {
                            ", or delete that object if that prune is gone"
                        }
                    )));
                }
            }
            // Stale or unreadable: the prune that held it is gone. Claim the takeover first.
            let name = claim_takeover(&objects, &raw, held.as_ref(), &bytes).await?;
            // Released and taken again since it was read: not the lock this takeover claimed.
            if get_optional(&objects, layout::PRUNE_LOCK).await?.as_deref() != Some(&raw[..]) {
                continue;
            }
            tracing::warn!(event = "prune_lock_taken_over", holding = %name,
                host = held.as_ref().map(|h| h.host.as_str()), pid = held.as_ref().map(|h| h.pid));
            objects.delete(layout::PRUNE_LOCK).await?;
        }
        Err(EngineError::Conflict(format!("could not take {}; retry", layout::PRUNE_LOCK)))
    }

    /// Starts beating for a lock just taken.
    fn start(objects: DynStore, nonce: String, heartbeat: Duration, taken: Timestamp) -> PruneLock {
        let last_beat = Arc::new(AtomicI64::new(taken.0));
        let beats = tokio::spawn(beat(objects.clone(), nonce.clone(), heartbeat, last_beat.clone()));
        PruneLock { objects, nonce, heartbeat, last_beat, beats }
    }

    /// Deletes the beats of earlier holdings (their holders are gone: this one holds the lock)
    /// and takeover markers older than a day. Best effort: leftovers cost a listing entry.
    async fn clean_leftovers(&self) {
        let own = layout::prune_lock_beats(&self.nonce);
        if let Ok(beats) = self.objects.list(layout::PRUNE_LOCK_BEATS).await {
            for o in beats.into_iter().filter(|o| !o.key.starts_with(&own)) {
                let _ = self.objects.delete(&o.key).await;
            }
        }
        let Ok(markers) = self.objects.list(layout::PRUNE_LOCK_BREAKS).await else { return };
        for o in markers {
            let old = match get_optional(&self.objects, &o.key).await {
                Ok(Some(raw)) => serde_json::from_slice::<LockInfo>(&raw)
                    .map_or(true, |i| i.time.plus_secs(BREAK_MARKER_SECS) < now()),
                _ => false,
            };
            if old {
                let _ = self.objects.delete(&o.key).await;
            }
        }
    }

    /// Fails when this holding may have been taken over: its last beat is older than half the
    /// stale window, or a takeover of it was claimed. Call it before destructive steps.
    pub async fn check(&self) -> Result<()> {
        let last = Timestamp(self.last_beat.load(Ordering::SeqCst));
        let window = (self.heartbeat.as_secs() as i64) * STALE_BEATS / 2;
        if last.plus_secs(window) < now() {
            return Err(EngineError::Conflict(format!(
                "this prune could not refresh {} since {last}; stopping, another prune may take it over",
                layout::PRUNE_LOCK
            )));
        }
        if get_optional(&self.objects, &layout::prune_lock_break(&self.nonce)).await?.is_some() {
            return Err(EngineError::Conflict(format!(
                "{} was taken over by another prune; this one stops",
                layout::PRUNE_LOCK
            )));
        }
        Ok(())
    }

    /// Stops beating and releases the lock, unless it was taken over (then it is another
    /// prune's, and left alone).
    pub async fn release(self) -> Result<()> {
        self.beats.abort();
        let taken_over = get_optional(&self.objects, &layout::prune_lock_break(&self.nonce)).await?.is_some();
        if taken_over {
            return Err(EngineError::Conflict(format!(
                "{} was taken over by another prune while this one held it",
                layout::PRUNE_LOCK
            )));
        }
        self.objects.delete(layout::PRUNE_LOCK).await?;
        // After the lock: a lock left without beats would look stale sooner.
        if let Ok(beats) = self.objects.list(&layout::prune_lock_beats(&self.nonce)).await {
            for o in beats {
                let _ = self.objects.delete(&o.key).await;
            }
        }
        Ok(())
    }
}

/// Claims the takeover of the stale lock read as `raw` by creating its break marker, and returns
/// the holding's name. When a taker already created that marker, the takeover is refused while
/// that taker is live (its own heartbeat window from when it claimed); a taker that died in the
/// middle is taken over in turn, through the marker of its marker.
async fn claim_takeover(objects: &DynStore, raw: &Bytes, held: Option<&LockInfo>, mine: &Bytes) -> Result<String> {
    let name = holding_name(held, raw);
    let (mut target_raw, mut target) = (raw.clone(), held.cloned());
    for _ in 0..4 {
        let marker = layout::prune_lock_break(&holding_name(target.as_ref(), &target_raw));
        if objects.put_if_absent(&marker, mine.clone()).await? == Put::Created {
            return Ok(name);
        }
        // Gone since: only the day-old ones are deleted; claim it again.
        let Some(marker_raw) = get_optional(objects, &marker).await? else { continue };
        let taker = serde_json::from_slice::<LockInfo>(&marker_raw).ok();
        if taker.as_ref().is_some_and(|t| stale_at(t, None) > now()) {
            return Err(EngineError::Conflict(format!(
                "another prune is taking over the stale {}; retry",
                layout::PRUNE_LOCK
            )));
        }
        (target_raw, target) = (marker_raw, taker);
    }
    Err(EngineError::Conflict(format!("could not claim the takeover of {}; retry", layout::PRUNE_LOCK)))
}

/// A random name for one holding of the lock (time and pid hashed when the kernel gives no
/// randomness, which weakens only uniqueness between machines).
fn random_nonce() -> String {
    let mut buf = [0u8; 16];
    if rustix::rand::getrandom(&mut buf[..], rustix::rand::GetRandomFlags::empty()).map_or(true, |n| n < 16) {
        let seed = format!("{:?}{}", now(), std::process::id());
        buf.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refreshes the holding `nonce` every `heartbeat`: a new beat, then the previous one deleted.
/// A beat that fails is retried at the next period (and [`PruneLock::check`] sees the gap).
async fn beat(objects: DynStore, nonce: String, heartbeat: Duration, last_beat: Arc<AtomicI64>) {
    let mut seq: u64 = 0;
    loop {
        tokio::time::sleep(heartbeat).await;
        let t = now();
        let body = Bytes::from(serde_json::to_vec(&Beat { time: t }).unwrap_or_default());
        match objects.put_if_absent(&layout::prune_lock_beat(&nonce, seq + 1), body).await {
            Ok(_) => {
                last_beat.store(t.0, Ordering::SeqCst);
                if seq > 0 {
                    let _ = objects.delete(&layout::prune_lock_beat(&nonce, seq)).await;
                }
                seq += 1;
            }
            Err(e) => tracing::warn!(event = "prune_lock_beat_failed", error = %e),
        }
    }
}

/// The time of the newest beat of `info`'s holding, if it has beaten. A beat deleted between
/// the listing and the read means the holder beat again meanwhile: it is alive now.
async fn last_beat(objects: &DynStore, info: &LockInfo) -> Result<Option<Timestamp>> {
    let Some(nonce) = &info.nonce else { return Ok(None) };
    let listed = objects.list(&layout::prune_lock_beats(nonce)).await?;
    let Some(newest) = listed.iter().map(|o| o.key.as_str()).max() else { return Ok(None) };
    match get_optional(objects, newest).await? {
        Some(raw) => Ok(serde_json::from_slice::<Beat>(&raw).ok().map(|b| b.time)),
        None => Ok(Some(now())),
    }
}

/// Reads `key`; `None` when it does not exist.
async fn get_optional(objects: &DynStore, key: &str) -> Result<Option<Bytes>> {
    match objects.get(key).await {
        Ok(b) => Ok(Some(b)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Stops the prune for good when the [`PAUSE_PRUNE_ENV`] test hook is set.
pub(crate) async fn pause_if_asked() {
    if std::env::var_os(PAUSE_PRUNE_ENV).is_some_and(|v| v == "1") {
        tracing::warn!(event = "test_hook_enabled", hook = PAUSE_PRUNE_ENV);
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(heartbeat_secs: Option<u64>) -> LockInfo {
        LockInfo { host: "h".into(), pid: 1, time: Timestamp(0), nonce: None, heartbeat_secs }
    }

    #[test]
    fn staleness_follows_the_heartbeat() {
        let secs = |s: i64| Timestamp(0).plus_secs(s);
        // Six missed beats of 20 s after the newest sign of life.
        assert_eq!(stale_at(&info(Some(20)), None), secs(120));
        assert_eq!(stale_at(&info(Some(20)), Some(secs(100))), secs(220));
        // A beat older than the lock (clock steps) does not shorten it.
        assert_eq!(stale_at(&info(Some(20)), Some(secs(-50))), secs(120));
        // A zero period counts as one second.
        assert_eq!(stale_at(&info(Some(0)), None), secs(6));
        // Without a heartbeat period: the old rule.
        assert_eq!(stale_at(&info(None), Some(secs(100))), secs(LEGACY_STALE_SECS));
    }

    #[test]
    fn a_takeover_names_the_holding() {
        let mut i = info(Some(20));
        i.nonce = Some("abc".into());
        assert_eq!(holding_name(Some(&i), b"x"), "abc");
        let legacy = holding_name(None, b"garbage");
        assert!(legacy.starts_with("legacy-") && legacy.len() == 39, "{legacy}");
        assert_ne!(legacy, holding_name(None, b"other"));
    }
}
