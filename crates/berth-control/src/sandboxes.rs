//! Sandboxes on the substrate: the settings, [`open`] (Docker, or Kubernetes with a berth
//! image: the local substrate runs no sandboxes), the death watcher that ends the session of
//! every sandbox that dies, and the warm pools ([`refill`], [`claim_warm`], `reap_abandoned`).
//!
//! A sandbox's session ends when its container dies: cleanly when the supervisor published
//! its final snapshot and detached first, otherwise uncleanly (the workspace is then at risk
//! until a later session ends clean or a rescue succeeds).
//!
//! Warm pools: [`refill`] starts the idle sandboxes a pool lacks under a `warm-fill:IMAGE` lock
//! row, so replicas never overfill it; [`claim_warm`] takes a `warm:CONTAINER` lock row (one
//! claim alone) and renames the sandbox out of the pool. The claimed sandbox gets its session as
//! its substrate's `HandOver` says: `PutFiles` (Docker: the spec and the claim uploaded into it
//! together) or `Fetch` (Kubernetes: made with a token of its own in its 0400 `WARM_PATH` file
//! and the token's hash in a label, it asks `GET /v1/sandboxes/claim`, 401 until the claim makes
//! that hash the session's, `Meta::hand_to_warm`; the ask is a long poll that a hand-over in the
//! same process wakes at once, and one on another replica within `CLAIM_RECHECK`).
//! `reap_abandoned` removes a fetching sandbox whose session had no live lease for a lease TTL
//! (it never fetched and would wait for ever).
//!
//! **Invariant:** a warm sandbox never mounts a workspace volume; it restores from the store
//! once claimed. No credential crosses the API at claim time, and the sandbox's token reads
//! only its own session's claim.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use berth_core::session::{InstanceId, ReplicaId, SessionId};
use berth_core::time::Timestamp;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{now, App, Config};
use crate::error::{Error, Result};
use crate::meta::{random_hex, token_hash};
use crate::volumes::{
    Death, HandOver, PrivateFile, SandboxInfo, SandboxKind, SandboxSpec, Sandboxes, Substrate, LABEL_INSTALL,
    LABEL_MANAGED, LABEL_POOL, LABEL_SANDBOX, LABEL_SESSION, RUN_DIR,
};

/// The UID:GID sandboxes run as unless configured.
pub const DEFAULT_USER: (u32, u32) = (1000, 1000);
/// Label holding a sandbox's stop timeout in seconds.
pub const LABEL_STOP_TIMEOUT: &str = "berth.stop-timeout";
/// Where the supervisor's spec is inside a sandbox.
pub const SPEC_PATH: &str = "/berth/spec.json";
/// Where a claimed warm sandbox finds its claim.
pub const CLAIM_PATH: &str = "/berth/claim.json";
/// Where a warm sandbox that fetches its claim finds the control plane's URL and its token.
pub const WARM_PATH: &str = "/berth/warm.json";
/// Label holding the hash of a fetching warm sandbox's token (its session's token once claimed).
pub const LABEL_TOKEN_HASH: &str = "berth.token-hash";
/// Where berth's binary is bind-mounted inside a sandbox.
pub const BERTH_PATH: &str = "/berth/bin/berth";
/// Drain budget of a sandbox that names none, in seconds.
pub const DEFAULT_GRACE_SECS: u64 = 30;
/// Name prefix of idle warm containers (a claimed one is renamed like a workspace's sandbox).
pub const WARM_PREFIX: &str = "warm-";
/// Name prefix of a workspace's sandbox.
pub const SANDBOX_PREFIX: &str = "sb-";
/// Seconds between two checks of the warm pools.
const REFILL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a pool's refill waits at most for the sandboxes claimed from it to end their init,
/// unless configured.
pub const DEFAULT_REFILL_HOLD_SECS: u64 = 10;
/// Seconds a claim of a warm container is held in the database: the claimed container is
/// renamed at once, so it never shows up as idle again.
const CLAIM_TTL_SECS: i64 = 24 * 3600;
/// The S3 settings handed to the supervisor (it removes them from the agent's environment).
const S3_ENV: [&str; 8] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
];

/// The stop timeout that gives a drain `grace_secs`: the platform grace whose drain budget
/// (grace minus its margin) is at least that.
pub fn stop_timeout_secs(grace_secs: u64) -> u64 {
    let mut t = grace_secs + 2;
    while berth_core::drain::budget_secs(Some(grace_secs), t) < grace_secs {
        t += 1;
    }
    t
}

/// How `berth serve` runs sandboxes.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    /// The network sandboxes join (`host`, `bridge`, a network's name); `None`: the engine's
    /// default.
    pub network: Option<String>,
    /// The control plane's URL as sandboxes reach it; `None`: `http://` + the listen address.
    pub server_url: Option<String>,
    /// UID:GID sandboxes run as; `None`: [`DEFAULT_USER`].
    pub user: Option<(u32, u32)>,
    /// The berth binary bind-mounted into sandboxes; `None`: this process's executable.
    pub berth_binary: Option<PathBuf>,
    /// Warm pools: idle containers kept per image.
    pub warm_pools: Vec<(String, usize)>,
    /// Labels put on every sandbox container (berth's own win over them).
    pub labels: BTreeMap<String, String>,
    /// The image of rescue containers; `None`: the first warm pool's.
    pub rescue_image: Option<String>,
    /// The image holding berth's binary, copied into sandbox pods by an init container
    /// (kubernetes substrate); `None`: no sandboxes on kubernetes.
    pub berth_image: Option<String>,
    /// How long a pool's refill waits at most for the sandboxes claimed from it to end their
    /// init, in seconds; `None`: [`DEFAULT_REFILL_HOLD_SECS`]; `Some(0)`: it never waits.
    pub refill_hold_secs: Option<u64>,
}

impl SandboxConfig {
    /// How long a pool's refill waits at most for claimed sandboxes' init, in seconds.
    pub fn refill_hold_secs(&self) -> u64 {
        self.refill_hold_secs.unwrap_or(DEFAULT_REFILL_HOLD_SECS)
    }

    /// The URL sandboxes reach the control plane at.
    pub fn server_url(&self, config: &Config) -> String {
        self.server_url.clone().unwrap_or_else(|| format!("http://{}", config.listen))
    }

    /// The user sandboxes run as.
    pub fn user(&self) -> (u32, u32) {
        self.user.unwrap_or(DEFAULT_USER)
    }

    /// The berth binary for sandboxes.
    pub fn berth_binary(&self) -> Result<PathBuf> {
        match &self.berth_binary {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe()
                .map_err(|e| Error::Config(format!("cannot find berth's own executable for sandboxes: {e}"))),
        }
    }
}

/// Opens the sandbox substrate `config` names: Docker's; Kubernetes' when a berth image is
/// given (`--sandbox-berth-image`); none on the local substrate.
pub async fn open(config: &Config) -> Result<Option<Arc<dyn Sandboxes>>> {
    match config.substrate {
        Substrate::Local => Ok(None),
        Substrate::Docker => docker(),
        Substrate::Kubernetes => kubernetes(config).await,
    }
}

#[cfg(feature = "kubernetes")]
async fn kubernetes(config: &Config) -> Result<Option<Arc<dyn Sandboxes>>> {
    let Some(image) = config.sandbox.berth_image.clone() else { return Ok(None) };
    let kube = berth_kube::Kube::infer(config.namespace.clone(), Default::default())
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let settings = berth_kube::PodSettings {
        berth_image: image,
        berth_in_image: berth_kube::DEFAULT_BERTH_IN_IMAGE.into(),
        fs_group: config.volume_owner.map(|(_, gid)| gid),
    };
    Ok(Some(Arc::new(berth_kube::KubeSandboxes::new(kube, settings))))
}

#[cfg(not(feature = "kubernetes"))]
async fn kubernetes(_: &Config) -> Result<Option<Arc<dyn Sandboxes>>> {
    Ok(None)
}

#[cfg(feature = "docker")]
fn docker() -> Result<Option<Arc<dyn Sandboxes>>> {
    let engine = berth_docker::Engine::from_env().map_err(|e| Error::Config(e.to_string()))?;
    Ok(Some(Arc::new(berth_docker::DockerSandboxes::new(engine))))
}

#[cfg(not(feature = "docker"))]
fn docker() -> Result<Option<Arc<dyn Sandboxes>>> {
    Err(Error::Config("this berth was built without the docker substrate (cargo feature `docker`)".into()))
}

/// The substrate's sandboxes, or the error that says there are none here.
pub fn of(app: &App) -> Result<&Arc<dyn Sandboxes>> {
    app.sandboxes.as_ref().ok_or_else(|| {
        Error::WrongState(format!(
            "the {} substrate runs no sandboxes: start berth serve with --substrate docker, or --substrate \
             kubernetes --sandbox-berth-image IMAGE",
            app.volumes.kind()
        ))
    })
}

/// The labels of every sandbox of this installation.
pub fn install_labels(app: &App) -> BTreeMap<String, String> {
    [(LABEL_MANAGED.to_string(), "true".to_string()), (LABEL_INSTALL.to_string(), app.install.clone())].into()
}

/// The binds of every sandbox: berth's binary, and a `file://` store at its own path.
pub fn binds_of(config: &Config) -> Result<Vec<(String, String, bool)>> {
    let berth = config.sandbox.berth_binary()?;
    let mut binds = vec![(berth.display().to_string(), BERTH_PATH.to_string(), true)];
    if let Some(path) = config.store.as_deref().and_then(|s| s.strip_prefix("file://")) {
        binds.push((path.to_string(), path.to_string(), false));
    }
    Ok(binds)
}

/// The environment of every sandbox's supervisor: the S3 settings when the store is S3.
pub fn store_env_of(config: &Config) -> Vec<String> {
    if !config.store.as_deref().is_some_and(|s| s.starts_with("s3://")) {
        return Vec::new();
    }
    let mut env: Vec<String> =
        S3_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}"))).collect();
    // The supervisor keeps them from the agent's environment.
    env.push(format!("BERTH_SUPERVISOR_ONLY_ENV={}", S3_ENV.join(",")));
    env
}

/// The labels of `image`'s warm containers.
pub fn warm_labels(app: &App, image: &str) -> BTreeMap<String, String> {
    let mut labels = install_labels(app);
    labels.insert(LABEL_SANDBOX.into(), SandboxKind::Warm.as_str().into());
    labels.insert(LABEL_POOL.into(), image.into());
    labels
}

/// A warm container's labels: the configured ones, then the pool's.
fn new_warm_labels(app: &App, image: &str) -> BTreeMap<String, String> {
    let mut labels = app.config.sandbox.labels.clone();
    labels.extend(warm_labels(app, image));
    labels
}

/// Whether a sandbox of the listing is an idle warm one.
fn idle_warm(s: &SandboxInfo) -> bool {
    s.name.starts_with(WARM_PREFIX) && matches!(s.state.as_str(), "created" | "running")
}

/// A warm container of `image`: berth's supervisor waiting for a claim, no workspace volume.
/// Where the claim is fetched, the container holds a token of its own from the start (in its
/// private file, its hash in a label): the claim makes it the session's token.
fn warm_spec(app: &App, image: &str, hand_over: HandOver) -> Result<SandboxSpec> {
    let stop_timeout = stop_timeout_secs(DEFAULT_GRACE_SECS);
    let mut labels = new_warm_labels(app, image);
    labels.insert(LABEL_STOP_TIMEOUT.into(), stop_timeout.to_string());
    let pool: String = blake3::hash(image.as_bytes()).to_hex().chars().take(8).collect();
    let wait = [BERTH_PATH, "agent", "wait"].map(String::from).to_vec();
    let (command, private_file) = match hand_over {
        HandOver::PutFiles => ([wait, vec!["--claim".into(), CLAIM_PATH.into()]].concat(), None),
        HandOver::Fetch => {
            let token = format!("bst_{}", random_hex(32));
            labels.insert(LABEL_TOKEN_HASH.into(), token_hash(&token));
            let warm = serde_json::json!({"server": app.config.sandbox.server_url(&app.config), "token": token});
            let file = PrivateFile { path: WARM_PATH.into(), content: warm.to_string().into_bytes() };
            let fetch = ["--fetch", WARM_PATH, "--spec-out"].map(String::from).to_vec();
            ([wait, fetch, vec![format!("{RUN_DIR}/spec.json")]].concat(), Some(file))
        }
    };
    Ok(SandboxSpec {
        name: format!("{WARM_PREFIX}{pool}-{}", random_hex(4)),
        image: image.to_string(),
        command,
        env: store_env_of(&app.config),
        volume: None,
        binds: binds_of(&app.config)?,
        private_file,
        user: app.config.sandbox.user(),
        memory_bytes: None,
        cpus: None,
        stop_timeout_secs: stop_timeout,
        network: app.config.sandbox.network.clone(),
        labels,
    })
}

/// The sandboxes claimed from each warm pool whose init has not ended yet. A pool's refill
/// waits for them: starting a new warm container (the engine creating it, mounting its
/// filesystem, the supervisor starting) takes the CPU and disk the claimed sandboxes' restores
/// need, and their time to the command running is what a warm pool is for.
///
/// # Guarantees
/// - The refill never waits longer than the hold (`--warm-refill-hold`) at a time: the wait
///   starts with the first claim it waits for, and claims that come while it waits do not
///   extend it. When it is over, those claims hold nothing any more, so a steady stream of
///   claims delays each refill by at most the hold; it never starves the pool.
/// - A claim stops holding when its sandbox says its init has ended (the heartbeat carrying
///   `init_done`) or when it dies.
///
/// # Caveats
/// - Kept in memory by the replica that claimed. Another replica's refill does not wait, and
///   a sandbox whose `init_done` heartbeat reaches another replica holds this one's refill
///   until the bound.
#[derive(Debug, Default)]
pub struct RefillHolds(Mutex<BTreeMap<String, Hold>>);

/// One pool's wait.
#[derive(Debug, Default)]
struct Hold {
    /// The claimed sandboxes (instance ids) still initialising.
    initialising: BTreeSet<String>,
    /// When the refill began to wait for them.
    since: Option<Timestamp>,
}

impl RefillHolds {
    fn pools(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Hold>> {
        // Every critical section leaves the map whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `instance` was claimed from `image`'s pool at `now`: it holds the pool's
    /// refill until its init ends.
    pub fn claimed(&self, image: &str, instance: &str, now: Timestamp) {
        let mut pools = self.pools();
        let hold = pools.entry(image.to_string()).or_default();
        hold.initialising.insert(instance.to_string());
        hold.since.get_or_insert(now);
    }

    /// Records that `instance`'s init has ended (or that it died) at `now`: it holds no
    /// refill any more.
    pub fn init_ended(&self, instance: &str, now: Timestamp) {
        for (image, hold) in self.pools().iter_mut() {
            if hold.initialising.remove(instance) && hold.initialising.is_empty() {
                if let Some(since) = hold.since.take() {
                    tracing::info!(event = "warm_refill_released", image = %image, reason = "init_done",
                        instance, held_ms = (now.0 - since.0) / 1_000_000);
                }
            }
        }
    }

    /// Whether `image`'s refill waits at `now`: a sandbox claimed from it is still
    /// initialising, and the refill has waited less than `hold_secs`.
    pub fn holds(&self, image: &str, now: Timestamp, hold_secs: u64) -> bool {
        let mut pools = self.pools();
        let Some(hold) = pools.get_mut(image) else { return false };
        let Some(since) = hold.since else { return false };
        if hold.initialising.is_empty() || now.0 >= since.plus_secs(hold_secs as i64).0 {
            if !hold.initialising.is_empty() {
                tracing::info!(event = "warm_refill_released", image = %image, reason = "bound",
                    initialising = hold.initialising.len(), held_ms = (now.0 - since.0) / 1_000_000);
            }
            pools.remove(image);
            return false;
        }
        true
    }
}

/// Starts the warm containers each pool lacks. One replica at a time fills a pool (a lock in
/// the database), so replicas never overfill it.
pub async fn refill(app: &App, sandboxes: &dyn Sandboxes) -> Result<usize> {
    let mut started = 0;
    for (image, want) in &app.config.sandbox.warm_pools {
        if app.refill_holds.holds(image, now(), app.config.sandbox.refill_hold_secs()) {
            continue;
        }
        let lock = format!("warm-fill:{image}");
        if !app.meta.try_lock(&lock, &app.replica, now(), 60).await? {
            continue;
        }
        let filled = async {
            let idle = sandboxes.list(&warm_labels(app, image)).await?.iter().filter(|s| idle_warm(s)).count();
            for _ in idle..*want {
                let info = sandboxes.start(&warm_spec(app, image, sandboxes.hand_over())?).await?;
                tracing::info!(event = "warm_started", image = %image, container = %info.name);
                started += 1;
            }
            Ok::<_, Error>(())
        }
        .await;
        app.meta.unlock(&lock, &app.replica).await?;
        filled?;
    }
    Ok(started)
}

/// Claims an idle warm container of `image` and renames it `name`; `None` when the pool is
/// empty. The claim is a lock row in the database taken by this call alone, so two starts
/// (of any replicas) never claim one container.
pub async fn claim_warm(app: &App, sandboxes: &dyn Sandboxes, image: &str, name: &str) -> Result<Option<SandboxInfo>> {
    if !app.config.sandbox.warm_pools.iter().any(|(i, n)| i == image && *n > 0) {
        return Ok(None);
    }
    let holder = ReplicaId::new(format!("claim_{}", random_hex(8))).map_err(|e| Error::Corrupt(e.to_string()))?;
    for candidate in sandboxes.list(&warm_labels(app, image)).await? {
        if candidate.state != "running" || !candidate.name.starts_with(WARM_PREFIX) {
            continue;
        }
        if !app.meta.try_lock(&format!("warm:{}", candidate.id), &holder, now(), CLAIM_TTL_SECS).await? {
            continue;
        }
        match sandboxes.rename(&candidate.id, name).await {
            Ok(()) => {
                app.refill_holds.claimed(image, name, now());
                return Ok(Some(SandboxInfo { name: name.to_string(), ..candidate }));
            }
            // Gone meanwhile (died, removed): the next one.
            Err(e) => tracing::warn!(event = "warm_claim_failed", container = %candidate.id, error = %e),
        }
    }
    Ok(None)
}

/// Removes claimed warm sandboxes that fetch their claim and have had no live session for a
/// lease TTL (`orphaned`: when each was first seen so). One that could not reach the control
/// plane before its session's lease expired never fetched its claim: renamed, it is no longer
/// idle, and it would wait for ever. (A sandbox that does run its session ends with it, and the
/// death watcher removes it; one the claim put files into has nothing to wait for.)
async fn reap_abandoned(
    app: &App,
    sandboxes: &dyn Sandboxes,
    orphaned: &mut HashMap<String, tokio::time::Instant>,
) -> Result<usize> {
    if sandboxes.hand_over() != HandOver::Fetch {
        return Ok(0);
    }
    let grace = Duration::from_secs(app.config.lease_ttl_secs.max(1) as u64);
    let mut seen = HashMap::new();
    let mut removed = 0;
    for s in sandboxes.list(&install_labels(app)).await? {
        let warm = s.labels.get(LABEL_SANDBOX).map(String::as_str) == Some(SandboxKind::Warm.as_str());
        if !warm || !s.name.starts_with(SANDBOX_PREFIX) || s.state == "exited" {
            continue;
        }
        let Ok(instance) = InstanceId::new(s.name.clone()) else { continue };
        if app.meta.live_session_of(&instance).await?.is_some() {
            continue;
        }
        let since = *orphaned.get(&s.id).unwrap_or(&tokio::time::Instant::now());
        if since.elapsed() < grace {
            seen.insert(s.id.clone(), since);
            continue;
        }
        tracing::warn!(event = "warm_abandoned", container = %s.id, name = %s.name,
            hint = "its session ended before it fetched its claim (could it reach --sandbox-server-url?)");
        sandboxes.remove(&s.id).await?;
        removed += 1;
    }
    *orphaned = seen;
    Ok(removed)
}

/// Starts the death watcher (every sandbox of this installation that dies ends its session
/// and is removed) and the warm pools' refill.
pub fn spawn(app: &Arc<App>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let Some(sandboxes) = app.sandboxes.clone() else { return };
    if !app.config.sandbox.warm_pools.is_empty() {
        let (app, sandboxes, shutdown) = (app.clone(), sandboxes.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut orphaned = HashMap::new();
            loop {
                if let Err(e) = refill(&app, sandboxes.as_ref()).await {
                    tracing::warn!(event = "warm_refill_failed", error = %e);
                }
                if let Err(e) = reap_abandoned(&app, sandboxes.as_ref(), &mut orphaned).await {
                    tracing::warn!(event = "warm_reap_failed", error = %e);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(REFILL_INTERVAL) => {}
                }
            }
        });
    }
    let app = app.clone();
    tracker.spawn(async move {
        let mut deaths = sandboxes.deaths(install_labels(&app));
        loop {
            let death = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = deaths.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            if let Err(e) = on_death(&app, sandboxes.as_ref(), &death).await {
                tracing::warn!(event = "sandbox_death_failed", container = %death.id, error = %e);
            }
        }
    });
}

/// Ends the dead sandbox's session (a no-op when it detached already) and removes it.
async fn on_death(app: &App, sandboxes: &dyn Sandboxes, death: &Death) -> Result<()> {
    let mut session = death.labels.get(LABEL_SESSION).and_then(|s| SessionId::new(s.clone()).ok());
    if session.is_none() && death.name.starts_with(SANDBOX_PREFIX) {
        // A claimed warm container: its session is the one attached under its name.
        if let Ok(instance) = InstanceId::new(death.name.clone()) {
            session = app.meta.live_session_of(&instance).await?.map(|s| s.id);
        }
    }
    app.refill_holds.init_ended(&death.name, now());
    tracing::info!(
        event = "sandbox_died",
        container = %death.id,
        kind = death.labels.get(LABEL_SANDBOX).map(String::as_str).unwrap_or(""),
        session = session.as_ref().map(|s| s.as_str()).unwrap_or(""),
        exit_code = death.ended.exit_code.unwrap_or(-1),
        oom_killed = death.ended.oom_killed,
    );
    if let Some(session) = &session {
        match app.meta.detach(session, now()).await {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    sandboxes.remove(&death.id).await?;
    Ok(())
}
