//! Rescues of at-risk volumes, as the metadata store sees them: a rescue session takes the
//! workspace's lease with a new epoch, then records its snapshot as its final one (clearing
//! the risk) or its failure, and releases the lease. The lifecycle (`berth_core::lifecycle`)
//! decides both.
//!
//! # Guarantees
//! - The rescue's lease has a higher epoch than any the workspace handed out, so a zombie of
//!   the last sandbox is fenced before the volume is read.
//! - The snapshot pointer is written only while the rescue's epoch is the live lease's.

use berth_core::id::SnapshotId;
use berth_core::lease::{Epoch, Holder};
use berth_core::lifecycle::{self, Event};
use berth_core::session::{InstanceId, ReplicaId, SessionId};
use berth_core::time::Timestamp;
use berth_core::workspace::{Generation, WorkspaceId};

use super::gc::Claimed;
use super::sessions::{insert_session, write_pointer, Pointer, SessionRow, SnapshotStats};
use super::workspaces::{not_found, refused};
use super::{begin, random_hex, token_hash, Meta};
use crate::error::{Error, Result};

/// The instance id every rescue session carries.
const RESCUE_INSTANCE: &str = "berth-rescue";

/// A rescue's hold on a workspace.
#[derive(Clone, PartialEq, Eq)]
pub struct RescueLease {
    /// The owner.
    pub owner: WorkspaceId,
    /// The generation being rescued.
    pub generation: Generation,
    /// The rescue session.
    pub session: SessionId,
    /// Its epoch.
    pub epoch: Epoch,
}

impl std::fmt::Debug for RescueLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RescueLease({} gen {} {} epoch {})", self.owner, self.generation, self.session, self.epoch)
    }
}

impl Meta {
    /// Takes the lease of the claimed at-risk workspace for a rescue session with a new epoch,
    /// for `ttl_secs`. Refused when the claim was lost, the workspace is not at risk, or a
    /// lease is live.
    pub async fn begin_rescue(
        &self,
        claimed: &Claimed,
        holder: &ReplicaId,
        ttl_secs: i64,
        now: Timestamp,
    ) -> Result<RescueLease> {
        let owner = &claimed.candidate.owner;
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        let corrupt = |e: berth_core::session::NameError| Error::Corrupt(e.to_string());
        let session = SessionId::new(format!("ses_{}", random_hex(16))).map_err(corrupt)?;
        let instance = InstanceId::new(RESCUE_INSTANCE).map_err(corrupt)?;
        let event = Event::RescueStarted {
            holder: holder.clone(),
            generation: claimed.candidate.generation,
            session: Holder { session: session.clone(), instance: instance.clone() },
            ttl_secs,
        };
        let transition = lifecycle::step(&ws.record, event, now).map_err(|r| refused(owner, r, now))?;
        let epoch = transition.0.lease.epoch;
        let row = SessionRow {
            id: session.clone(),
            owner: owner.clone(),
            generation: ws.record.generation,
            epoch,
            instance,
            node: None,
            pool: None,
            ended_at: None,
        };
        // Nobody gets the session's token: the rescue acts through the control plane itself,
        // and a rescue job holds no credential of it. The hash only fills the column.
        insert_session(&mut tx, &row, &token_hash(&format!("bst_{}", random_hex(32))), now).await?;
        self.store(&mut tx, Some(&ws), transition, None, now).await?;
        tx.commit().await?;
        Ok(RescueLease { owner: owner.clone(), generation: ws.record.generation, session, epoch })
    }

    /// Finishes a rescue: on success, records `snapshot` as the rescue session's final one
    /// (only while its epoch is live), which clears the risk; either way ends the session and
    /// releases the lease. Returns the snapshot, or why the rescue failed.
    pub async fn finish_rescue(
        &self,
        lease: &RescueLease,
        result: std::result::Result<(SnapshotId, SnapshotStats), String>,
        now: Timestamp,
    ) -> Result<std::result::Result<SnapshotId, String>> {
        let owner = &lease.owner;
        let mut conn = self.write.acquire().await?;
        let mut tx = begin(&mut conn).await?;
        let ws = self.ws_for_update(&mut tx, owner).await?.ok_or_else(|| not_found(owner))?;
        let result = match result {
            Ok((snapshot, stats)) => match ws.record.lease.check(lease.epoch, now) {
                Ok(()) if ws.record.generation == lease.generation => {
                    let pointer = Pointer {
                        owner,
                        generation: lease.generation,
                        snapshot_id: &snapshot,
                        epoch: lease.epoch,
                        session: &lease.session,
                        final_snapshot: true,
                    };
                    write_pointer(&mut tx, &pointer, &stats, now).await?;
                    Ok(snapshot)
                }
                Ok(()) => Err(format!("the generation moved on from {} during the rescue", lease.generation)),
                Err(fenced) => Err(format!("the rescue lost its lease before it could publish: {fenced}")),
            },
            Err(e) => Err(e),
        };
        let event = Event::RescueFinished { session: lease.session.clone(), result: result.clone() };
        let transition = lifecycle::step(&ws.record, event, now).map_err(|r| refused(owner, r, now))?;
        self.store(&mut tx, Some(&ws), transition, None, now).await?;
        tx.commit().await?;
        Ok(result)
    }
}
