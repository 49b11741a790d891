//! The core driven alone, with simulated time: no processes, no sockets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Version;
use crate::config::app::{App, HandlerLimits, HandlerPlan, HandlerSettings, HandlerSpec, Route};
use crate::primary::control::protocol::{DeployError, DeployKind, DeployResult};

/// A handler of `name` at `version`, its artifact with `digest`.
pub(super) fn handler(name: &str, version: &str, digest: &str) -> HandlerSpec {
    let settings = HandlerSettings {
        grants: Default::default(),
        limits: HandlerLimits {
            timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            max_memory: 1 << 20,
            reuse: crate::config::Reuse::Default,
            max_instance_concurrency: 1,
            smoke: crate::config::SmokeCheck {
                path: "/".into(),
                timeout: Duration::from_secs(10),
            },
        },
    };
    HandlerSpec {
        plan: HandlerPlan {
            name: name.into(),
            source: PathBuf::from(format!("/app/{name}.wasm")),
            routes: vec![Route {
                host: None,
                path: format!("/{name}"),
                prefix: true,
            }],
            settings,
        },
        version: Version {
            artifact: PathBuf::from(format!("/cache/{version}.cwasm")),
            id: version.to_string(),
            digest: digest.to_string(),
        },
    }
}

/// The one-handler app at `version`.
pub(super) fn artifact(version: &str) -> Release {
    let h = handler("main", version, &format!("digest-of-{version}"));
    Release::new(App::new(vec![h], false), false, Duration::ZERO)
}

pub(super) fn settings(workers: usize) -> Settings {
    Settings {
        workers,
        max_workers: 8,
        load_timeout: Duration::from_secs(20),
        liveness_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(30),
        drain_delay: Duration::ZERO,
        debounce: Duration::from_millis(200),
    }
}

/// A core and a clock; every effect it produced, in order.
struct Sim {
    core: Core,
    now: Instant,
    log: Vec<Effect>,
}

impl Sim {
    /// A core whose `workers` workers have all started on v1.
    fn running(workers: usize) -> Sim {
        Sim::running_on(workers, artifact("v1"))
    }

    /// A core whose `workers` workers have all started on `first`.
    fn running_on(workers: usize, first: Release) -> Sim {
        let version = first.version.clone();
        let mut sim = Sim::starting_on(workers, first);
        for w in sim.spawns() {
            sim.input(Input::Spawned {
                worker: w,
                pid: 1000 + w.generation as u32,
            });
            sim.ready(w, &version);
        }
        assert!(sim.core.accepting());
        sim
    }

    fn starting(workers: usize) -> Sim {
        Sim::starting_on(workers, artifact("v1"))
    }

    fn starting_on(workers: usize, first: Release) -> Sim {
        let now = Instant::now();
        let (core, log) = Core::new(settings(workers), first, now);
        Sim { core, now, log }
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        let fx = self.core.handle(self.now, input);
        self.log.extend(fx.clone());
        fx
    }

    fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.input(Input::Tick)
    }

    fn ready(&mut self, w: WorkerId, version: &str) -> Vec<Effect> {
        self.input(Input::FromWorker(
            w,
            ToPrimary::Ready {
                version: version.into(),
            },
        ))
    }

    fn spawns(&self) -> Vec<WorkerId> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::Spawn { worker, .. } => Some(*worker),
                _ => None,
            })
            .collect()
    }

    fn worker(&self, index: usize) -> WorkerId {
        self.core.slots[index].id(index)
    }

    fn reload(&mut self, to: ControlId) -> JobId {
        let fx = self.input(Input::Control(to, Request::Reload { handler: None }));
        compile_job(&fx).expect("a compile starts")
    }

    fn compiled(&mut self, job: JobId, version: &str) -> Vec<Effect> {
        self.input(Input::Compiled {
            job,
            result: Ok(artifact(version)),
        })
    }

    fn loaded(&mut self, w: WorkerId, version: &str) -> Vec<Effect> {
        self.input(Input::FromWorker(
            w,
            ToPrimary::Loaded {
                version: version.into(),
            },
        ))
    }

    fn gone(&mut self, w: WorkerId, why: Gone) -> Vec<Effect> {
        self.input(Input::WorkerGone(w, why))
    }

    fn versions(&self) -> Vec<(WorkerState, String)> {
        self.core
            .slots
            .iter()
            .map(|s| (s.state, s.version.clone()))
            .collect()
    }
}

fn compile_job(fx: &[Effect]) -> Option<JobId> {
    fx.iter().find_map(|e| match e {
        Effect::Compile { job, .. } => Some(*job),
        _ => None,
    })
}

/// The `Load` sent in these effects: (worker, version).
fn load(fx: &[Effect]) -> Option<(WorkerId, String)> {
    fx.iter().find_map(|e| match e {
        Effect::Send(w, ToWorker::Load { app, .. }) => Some((*w, app.id.clone())),
        _ => None,
    })
}

fn reply(fx: &[Effect], to: ControlId) -> Option<Reply> {
    fx.iter().find_map(|e| match e {
        Effect::Reply(id, r) if *id == to => Some(r.clone()),
        _ => None,
    })
}

fn deploy_reply(fx: &[Effect], to: ControlId) -> DeployOutcome {
    match reply(fx, to) {
        Some(Reply::Deploy(d)) => d,
        other => panic!("expected a deploy reply, got {other:?} in {fx:?}"),
    }
}

use crate::primary::control::protocol::DeployOutcome;

fn all_ready(v: &str, n: usize) -> Vec<(WorkerState, String)> {
    vec![(WorkerState::Ready, v.to_string()); n]
}

#[test]
fn announces_once_every_worker_is_ready_and_only_then_accepts() {
    let mut sim = Sim::starting(2);
    let spawned = sim.spawns();
    assert_eq!(spawned.len(), 2);
    assert!(!sim.core.accepting());
    let fx = sim.ready(spawned[0], "v1");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Announce(_))));
    assert!(!sim.core.accepting());
    let fx = sim.ready(spawned[1], "v1");
    assert!(fx.contains(&Effect::Announce(Announcement::Listening { workers: 2 })));
    assert!(sim.core.accepting());
}

#[test]
fn a_worker_failing_at_start_up_ends_the_primary_with_its_error() {
    let mut sim = Sim::starting(2);
    let w = sim.spawns()[1];
    let fx = sim.input(Input::FromWorker(
        w,
        ToPrimary::Failed {
            error: "bad".into(),
        },
    ));
    assert!(
        fx.iter().any(
            |e| matches!(e, Effect::Exit(Err(StartFailure::Load { worker: 1, error })) if error == "bad")
        )
    );
    assert!(sim.core.is_done());
}

#[test]
fn a_damaged_artifact_is_compiled_again_and_replacements_load_the_new_file() {
    let mut sim = Sim::running(2);
    let w = sim.worker(1);
    let fx = sim.input(Input::FromWorker(
        w,
        ToPrimary::ArtifactDamaged {
            error: "does not match the digest".into(),
        },
    ));
    assert!(fx.contains(&Effect::Kill(w)), "{fx:?}");
    let job = compile_job(&fx).expect("the handler is compiled again");
    // No replacement loads the damaged file while it is rebuilt.
    let spawned = |fx: &[Effect]| {
        fx.iter().find_map(|e| match e {
            Effect::Spawn { worker, release } if worker.index == 1 => Some(release.clone()),
            _ => None,
        })
    };
    assert_eq!(spawned(&fx), None);
    assert_eq!(spawned(&sim.advance(Duration::from_secs(5))), None);
    assert!(
        sim.core.poll_timeout().unwrap() > sim.now,
        "the shell would spin"
    );
    // The cache rebuilt the file: the same version, other bytes.
    let rebuilt = Release::new(
        App::new(
            vec![handler("main", "v1", "digest-of-the-rebuilt-v1")],
            false,
        ),
        false,
        Duration::ZERO,
    );
    let fx = sim.input(Input::Compiled {
        job,
        result: Ok(rebuilt.clone()),
    });
    assert_eq!(load(&fx), None, "the same version is not rolled again");
    assert_eq!(sim.core.deploys.current(), &rebuilt);
    assert_eq!(
        spawned(&fx),
        Some(rebuilt),
        "the replacement loads the new file"
    );
}

#[test]
fn a_repair_never_rolls_out_a_handler_file_that_changed_meanwhile() {
    let mut sim = Sim::running(2);
    let fx = sim.input(Input::FromWorker(
        sim.worker(0),
        ToPrimary::ArtifactDamaged {
            error: "does not match the digest".into(),
        },
    ));
    let job = compile_job(&fx).expect("the handler is compiled again");
    // The file now holds v2, which nobody deployed (say, --no-watch).
    let fx = sim.compiled(job, "v2");
    assert_eq!(load(&fx), None, "a repair rolled out v2");
    assert_eq!(sim.core.deploys.current().version, "v1");
    assert!(sim.core.deploys.roll.is_none());
    // A reload deploys it as usual.
    let job = sim.reload(7);
    let fx = sim.compiled(job, "v2");
    assert!(load(&fx).is_some_and(|(_, v)| v == "v2"), "{fx:?}");
}

#[test]
fn connections_go_round_robin_and_are_held_until_acknowledged() {
    let mut sim = Sim::running(2);
    let mut targets = Vec::new();
    for conn in 1..=4 {
        let fx = sim.input(Input::Accepted(conn));
        match fx.as_slice() {
            [Effect::SendConn { worker, conn: c }] if *c == conn => targets.push(worker.index),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(targets, [0, 1, 0, 1]);
    let fx = sim.input(Input::FromWorker(
        sim.worker(0),
        ToPrimary::Accepted { ids: vec![1] },
    ));
    assert_eq!(fx, [Effect::CloseConn(1)]);
    // A worker cannot acknowledge another's connection.
    let fx = sim.input(Input::FromWorker(
        sim.worker(0),
        ToPrimary::Accepted { ids: vec![2] },
    ));
    assert!(fx.is_empty());
    assert_eq!(sim.core.in_transit.len(), 3);
}

#[test]
fn one_acknowledgement_may_name_several_connections() {
    let mut sim = Sim::running(2);
    for conn in 1..=5 {
        sim.input(Input::Accepted(conn)); // 1, 3, 5 to worker 0
    }
    // Worker 0 names its three and one of worker 1's: only its own close.
    let fx = sim.input(Input::FromWorker(
        sim.worker(0),
        ToPrimary::Accepted {
            ids: vec![1, 2, 3, 5],
        },
    ));
    assert_eq!(
        fx,
        [
            Effect::CloseConn(1),
            Effect::CloseConn(3),
            Effect::CloseConn(5)
        ]
    );
    assert_eq!(sim.core.in_transit.len(), 2);
    // Worker 0 holds nothing unacknowledged now: losing it re-sends nothing.
    let w0 = sim.worker(0);
    let fx = sim.gone(w0, Gone::ChannelClosed);
    assert!(!fx.iter().any(|e| matches!(e, Effect::SendConn { .. })));
}

#[test]
fn a_lost_workers_unacknowledged_connections_go_to_another() {
    let mut sim = Sim::running(2);
    sim.input(Input::Accepted(1)); // to 0
    sim.input(Input::Accepted(2)); // to 1
    sim.input(Input::Accepted(3)); // to 0
    let w0 = sim.worker(0);
    let fx = sim.gone(w0, Gone::ChannelClosed);
    assert!(fx.contains(&Effect::Kill(w0)));
    let resent: Vec<ConnId> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::SendConn { worker, conn } if worker.index == 1 => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(resent, [1, 3]);
    // A replacement is spawned at once (first death: no backoff).
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Spawn { worker, .. } if worker.index == 0))
    );
}

#[test]
fn a_full_channel_skips_the_worker_until_it_speaks() {
    let mut sim = Sim::running(2);
    let w0 = sim.worker(0);
    sim.input(Input::Accepted(1));
    let fx = sim.input(Input::ConnNotSent {
        conn: 1,
        worker: w0,
        full: true,
    });
    assert!(matches!(fx.as_slice(), [Effect::SendConn { worker, conn: 1 }] if worker.index == 1));
    let fx = sim.input(Input::Accepted(2));
    assert!(matches!(fx.as_slice(), [Effect::SendConn { worker, .. }] if worker.index == 1));
    sim.input(Input::FromWorker(
        w0,
        ToPrimary::Stats {
            requests: 0,
            in_flight: 0,
            counts: Default::default(),
        },
    ));
    let fx = sim.input(Input::Accepted(3));
    assert!(matches!(fx.as_slice(), [Effect::SendConn { worker, .. }] if worker.index == 0));
}

#[test]
fn connections_wait_while_no_worker_is_ready() {
    let mut sim = Sim::running(1);
    let w0 = sim.worker(0);
    sim.gone(w0, Gone::Exited("signal 9".into()));
    let fx = sim.input(Input::Accepted(7));
    assert!(fx.iter().all(|e| !matches!(e, Effect::SendConn { .. })));
    assert_eq!(sim.core.queue.len(), 1);
    let w = sim.worker(0);
    let fx = sim.ready(w, "v1");
    assert!(fx.contains(&Effect::SendConn { worker: w, conn: 7 }));
}

#[test]
fn a_roll_goes_through_every_worker_canary_first() {
    let mut sim = Sim::running(3);
    let job = sim.reload(9);
    let fx = sim.compiled(job, "v2");
    let (first, v) = load(&fx).unwrap();
    assert_eq!((first.index, v.as_str()), (0, "v2"));
    let fx = sim.loaded(first, "v2");
    assert_eq!(load(&fx).unwrap().0.index, 1);
    let fx = sim.loaded(sim.worker(1), "v2");
    assert_eq!(load(&fx).unwrap().0.index, 2);
    sim.now += Duration::from_millis(40);
    let fx = sim.loaded(sim.worker(2), "v2");
    assert!(fx.contains(&Effect::Announce(Announcement::Rolled {
        version: "v2".into(),
        workers: 3,
        ms: 40
    })));
    let d = deploy_reply(&fx, 9);
    assert!(matches!(
        d.result,
        DeployResult::Rolled {
            generation: 2,
            workers: 3,
            ..
        }
    ));
    assert_eq!(sim.versions(), all_ready("v2", 3));
    let s = sim.core.status(sim.now);
    assert_eq!(
        (s.version.as_str(), s.previous.as_deref()),
        ("v2", Some("v1"))
    );
    assert!(!s.deploying);
}

#[test]
fn a_canary_refusal_stops_the_roll_before_other_workers() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "bad");
    let (canary, _) = load(&fx).unwrap();
    let fx = sim.input(Input::FromWorker(
        canary,
        ToPrimary::LoadFailed {
            version: "bad".into(),
            error: "smoke check failed".into(),
        },
    ));
    assert!(load(&fx).is_none(), "nobody else is sent it: {fx:?}");
    let d = deploy_reply(&fx, 1);
    assert!(matches!(
        &d.result,
        DeployResult::RolledBack { error: DeployError::WorkerRefused { worker: 0, message }, kept }
            if message == "smoke check failed" && kept == "v1"
    ));
    assert_eq!(sim.versions(), all_ready("v1", 2));
}

#[test]
fn a_later_refusal_puts_switched_workers_back() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v2");
    let (canary, _) = load(&fx).unwrap();
    let fx = sim.loaded(canary, "v2");
    let (second, _) = load(&fx).unwrap();
    let fx = sim.input(Input::FromWorker(
        second,
        ToPrimary::LoadFailed {
            version: "v2".into(),
            error: "no".into(),
        },
    ));
    assert_eq!(load(&fx), Some((canary, "v1".to_string())));
    let fx = sim.loaded(canary, "v1");
    assert!(matches!(
        deploy_reply(&fx, 1).result,
        DeployResult::RolledBack { .. }
    ));
    assert_eq!(sim.versions(), all_ready("v1", 2));
    assert_eq!(sim.core.status(sim.now).version, "v1");
}

/// Every path that can notice a worker is gone, during the canary: the roll
/// ends (it used to wait forever when the hand-off noticed first) and the
/// next reload is not refused as busy.
#[test]
fn a_worker_lost_during_the_canary_ends_the_roll_whoever_noticed() {
    type Notice = Box<dyn Fn(&mut Sim, WorkerId) -> Vec<Effect>>;
    let paths: Vec<Notice> = vec![
        Box::new(|s, w| s.gone(w, Gone::ChannelClosed)),
        Box::new(|s, w| s.gone(w, Gone::Exited("signal 9".into()))),
        Box::new(|s, w| s.gone(w, Gone::ChannelBroken("EPIPE".into()))),
        Box::new(|s, w| {
            // The hand-off finds the channel broken.
            let conn = 77;
            s.core.in_transit.insert(conn, w);
            s.input(Input::ConnNotSent {
                conn,
                worker: w,
                full: false,
            })
        }),
        Box::new(|s, w| {
            // Liveness: it stopped talking (and so did the others, but
            // they are not loading; they are killed too).
            let _ = w;
            s.advance(Duration::from_secs(1));
            s.advance(Duration::from_secs(1));
            let mut fx = Vec::new();
            for _ in 0..10 {
                fx.extend(s.advance(Duration::from_secs(1)));
            }
            fx
        }),
    ];
    for (i, path) in paths.iter().enumerate() {
        let mut sim = Sim::running(2);
        let job = sim.reload(1);
        let fx = sim.compiled(job, "v2");
        let (canary, _) = load(&fx).unwrap();
        let fx = path(&mut sim, canary);
        let d = deploy_reply(&fx, 1);
        assert!(
            matches!(
                d.result,
                DeployResult::RolledBack {
                    error: DeployError::WorkerLost { worker: 0 },
                    ..
                }
            ),
            "path {i}: {d:?}"
        );
        assert!(!sim.core.deploys.busy(), "path {i}");
        let fx = sim.input(Input::Control(2, Request::Reload { handler: None }));
        assert!(
            compile_job(&fx).is_some(),
            "path {i}: reload refused: {fx:?}"
        );
    }
}

#[test]
fn a_worker_lost_during_the_revert_still_ends_the_roll() {
    let mut sim = Sim::running(3);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v2");
    let (w0, _) = load(&fx).unwrap();
    let fx = sim.loaded(w0, "v2");
    let (w1, _) = load(&fx).unwrap();
    let fx = sim.gone(w1, Gone::ChannelClosed);
    // Reverting: worker 0 is sent v1 back.
    assert_eq!(load(&fx), Some((w0, "v1".to_string())));
    let fx = sim.gone(w0, Gone::Exited("signal 9".into()));
    let d = deploy_reply(&fx, 1);
    assert!(matches!(d.result, DeployResult::RolledBack { .. }));
    assert!(!sim.core.deploys.busy());
    // Both replacements start on the last good version.
    let respawned: Vec<&Effect> = fx
        .iter()
        .filter(|e| matches!(e, Effect::Spawn { .. }))
        .collect();
    for e in &respawned {
        assert!(matches!(e, Effect::Spawn { release, .. } if release.version == "v1"));
    }
}

#[test]
fn a_refused_revert_replaces_the_worker() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v2");
    let (w0, _) = load(&fx).unwrap();
    let fx = sim.loaded(w0, "v2");
    let (w1, _) = load(&fx).unwrap();
    sim.input(Input::FromWorker(
        w1,
        ToPrimary::LoadFailed {
            version: "v2".into(),
            error: "x".into(),
        },
    ));
    let fx = sim.input(Input::FromWorker(
        w0,
        ToPrimary::LoadFailed {
            version: "v1".into(),
            error: "disk gone".into(),
        },
    ));
    assert!(fx.contains(&Effect::Kill(w0)));
    assert!(matches!(
        deploy_reply(&fx, 1).result,
        DeployResult::RolledBack { .. }
    ));
    // No worker serves v2 any more.
    assert!(sim.core.slots.iter().all(|s| s.version != "v2"));
}

#[test]
fn a_worker_that_never_answers_load_is_killed_at_the_deadline() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v2");
    let (canary, _) = load(&fx).unwrap();
    // Keep both workers talking so liveness does not fire first.
    for _ in 0..19 {
        sim.now += Duration::from_secs(1);
        for i in 0..2 {
            let w = sim.worker(i);
            sim.input(Input::FromWorker(
                w,
                ToPrimary::Stats {
                    requests: 0,
                    in_flight: 0,
                    counts: Default::default(),
                },
            ));
        }
    }
    assert!(sim.core.deploys.busy());
    assert_eq!(
        sim.core.poll_timeout().map(|t| t > sim.now),
        Some(true),
        "a deadline is pending"
    );
    let fx = sim.advance(Duration::from_secs(1));
    assert!(fx.contains(&Effect::Kill(canary)));
    assert!(matches!(
        deploy_reply(&fx, 1).result,
        DeployResult::RolledBack {
            error: DeployError::WorkerTimedOut { worker: 0, .. },
            ..
        }
    ));
    assert!(!sim.core.deploys.busy());
}

#[test]
fn a_worker_replaced_during_a_roll_catches_up_after_it() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v2");
    let (w0, _) = load(&fx).unwrap();
    // Worker 1 dies while the canary loads; its replacement starts on v1.
    let w1 = sim.worker(1);
    let fx = sim.gone(w1, Gone::Exited("signal 9".into()));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Spawn { release, .. } if release.version == "v1"))
    );
    let fx = sim.loaded(w0, "v2");
    let d = deploy_reply(&fx, 1);
    assert!(matches!(d.result, DeployResult::Rolled { workers: 1, .. }));
    // The replacement comes up on v1: a catch-up roll brings it to v2.
    let new1 = sim.worker(1);
    let fx = sim.ready(new1, "v1");
    assert_eq!(load(&fx), Some((new1, "v2".to_string())));
    let fx = sim.loaded(new1, "v2");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Announce(_))));
    assert_eq!(sim.versions(), all_ready("v2", 2));
    let s = sim.core.status(sim.now);
    assert_eq!(
        s.last_deploy.kind,
        DeployKind::Deploy,
        "catch-up is not the last deploy"
    );
    assert_eq!(s.history.last().unwrap().kind, DeployKind::CatchUp);
}

#[test]
fn a_compile_overtaken_by_a_newer_trigger_is_not_rolled() {
    let mut sim = Sim::running(1);
    let job = sim.reload(1);
    sim.input(Input::FileChanged(Scope::All));
    let fx = sim.advance(Duration::from_millis(250));
    assert!(compile_job(&fx).is_none(), "one compile at a time");
    let fx = sim.compiled(job, "half-written");
    let job2 = compile_job(&fx).expect("the file is read again");
    assert!(load(&fx).is_none());
    assert!(reply(&fx, 1).is_none(), "the waiter waits for the newest");
    let fx = sim.compiled(job2, "v2");
    let fx2 = sim.loaded(load(&fx).unwrap().0, "v2");
    assert_eq!(deploy_reply(&fx2, 1).version.as_deref(), Some("v2"));
    // A stale job's result is ignored.
    assert!(sim.compiled(job, "old").is_empty());
}

#[test]
fn file_events_are_debounced_into_one_compile() {
    let mut sim = Sim::running(1);
    for _ in 0..5 {
        let fx = sim.input(Input::FileChanged(Scope::All));
        assert!(compile_job(&fx).is_none());
        sim.now += Duration::from_millis(50);
    }
    let fx = sim.advance(Duration::from_millis(200));
    assert!(compile_job(&fx).is_some());
}

#[test]
fn an_unchanged_file_rolls_nothing_and_a_compile_error_is_reported() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v1");
    assert_eq!(deploy_reply(&fx, 1).result, DeployResult::Unchanged);
    let job = sim.reload(2);
    let fx = sim.input(Input::Compiled {
        job,
        result: Err("`h.wasm` is not a WebAssembly file".into()),
    });
    let d = deploy_reply(&fx, 2);
    assert!(!d.ok());
    assert!(load(&fx).is_none());
}

#[test]
fn rollback_needs_a_previous_version_and_no_deploy_in_progress() {
    let mut sim = Sim::running(1);
    let fx = sim.input(Input::Control(1, Request::Rollback { handler: None }));
    assert_eq!(
        reply(&fx, 1),
        Some(Reply::Refused {
            reason: Refusal::NoPreviousVersion
        })
    );
    let job = sim.reload(2);
    let fx = sim.input(Input::Control(3, Request::Rollback { handler: None }));
    assert_eq!(
        reply(&fx, 3),
        Some(Reply::Refused {
            reason: Refusal::Busy
        })
    );
    let fx = sim.compiled(job, "v2");
    sim.loaded(load(&fx).unwrap().0, "v2");
    let fx = sim.input(Input::Control(4, Request::Rollback { handler: None }));
    let (w, v) = load(&fx).unwrap();
    assert_eq!(v, "v1");
    let fx = sim.loaded(w, "v1");
    assert_eq!(deploy_reply(&fx, 4).kind, DeployKind::Rollback);
    assert_eq!(sim.core.status(sim.now).previous.as_deref(), Some("v2"));
}

#[test]
fn scaling_up_spawns_and_scaling_down_drains_the_highest() {
    let mut sim = Sim::running(2);
    let fx = sim.input(Input::Control(1, Request::Scale { workers: 4 }));
    let spawned: Vec<usize> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Spawn { worker, .. } => Some(worker.index),
            _ => None,
        })
        .collect();
    assert_eq!(spawned, [2, 3]);
    assert!(matches!(reply(&fx, 1), Some(Reply::Scale(s)) if s.target == 4 && !s.deferred));
    for i in 2..4 {
        let w = sim.worker(i);
        sim.ready(w, "v1");
    }
    let fx = sim.input(Input::Control(2, Request::Scale { workers: 1 }));
    let drained: Vec<usize> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Send(w, ToWorker::Drain) => Some(w.index),
            _ => None,
        })
        .collect();
    assert_eq!(drained, [1, 2, 3]);
    // Draining workers get no connections.
    for conn in 1..=3 {
        let fx = sim.input(Input::Accepted(conn));
        assert!(matches!(fx.as_slice(), [Effect::SendConn { worker, .. }] if worker.index == 0));
    }
    for i in [3, 1, 2] {
        let w = sim.worker(i);
        let fx = sim.gone(w, Gone::ChannelClosed);
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::Spawn { .. })),
            "{fx:?}"
        );
        sim.gone(w, Gone::Exited("exit status: 0".into()));
    }
    assert_eq!(sim.core.slots.len(), 1, "retired slots are dropped");
    let fx = sim.input(Input::Control(3, Request::Scale { workers: 0 }));
    assert!(matches!(
        reply(&fx, 3),
        Some(Reply::Refused {
            reason: Refusal::WorkersOutOfRange { .. }
        })
    ));
    let fx = sim.input(Input::Control(4, Request::Scale { workers: 9 }));
    assert!(matches!(reply(&fx, 4), Some(Reply::Refused { .. })));
}

#[test]
fn signals_scale_by_one_with_a_floor_of_one() {
    let mut sim = Sim::running(1);
    let fx = sim.input(Input::Signal(SignalEvent::ScaleUp));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Spawn { worker, .. } if worker.index == 1))
    );
    let w1 = sim.worker(1);
    sim.ready(w1, "v1");
    let fx = sim.input(Input::Signal(SignalEvent::ScaleDown));
    assert!(fx.contains(&Effect::Send(w1, ToWorker::Drain)));
    let fx = sim.input(Input::Signal(SignalEvent::ScaleDown));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Send(_, ToWorker::Drain)))
    );
    assert_eq!(sim.core.target, 1);
}

#[test]
fn scaling_during_a_roll_waits_for_it_to_end() {
    let mut sim = Sim::running(2);
    let job = sim.reload(1);
    let fx = sim.compiled(job, "v2");
    let (w0, _) = load(&fx).unwrap();
    let fx = sim.input(Input::Control(2, Request::Scale { workers: 3 }));
    assert!(matches!(reply(&fx, 2), Some(Reply::Scale(s)) if s.deferred));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Spawn { .. })));
    let fx = sim.input(Input::Signal(SignalEvent::ScaleDown));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Send(_, ToWorker::Drain)))
    );
    assert_eq!(sim.core.status(sim.now).pending_target, Some(2));
    sim.input(Input::Control(3, Request::Scale { workers: 1 }));
    let fx = sim.loaded(w0, "v2");
    let (w1, _) = load(&fx).unwrap();
    let fx = sim.loaded(w1, "v2");
    // The roll ended: now the last scale asked for applies.
    assert!(fx.contains(&Effect::Send(w1, ToWorker::Drain)));
    assert_eq!(sim.core.target, 1);
    assert_eq!(sim.core.pending_target, None);
}

#[test]
fn a_crash_loop_backs_off_exponentially() {
    let mut sim = Sim::running(1);
    let mut delays = Vec::new();
    for _ in 0..5 {
        let w = sim.worker(0);
        let died = sim.now;
        let fx = sim.gone(w, Gone::Exited("signal 11".into()));
        let mut spawned = fx.iter().any(|e| matches!(e, Effect::Spawn { .. }));
        while !spawned {
            let fx = sim.advance(Duration::from_millis(10));
            spawned = fx.iter().any(|e| matches!(e, Effect::Spawn { .. }));
        }
        delays.push((sim.now - died).as_millis());
        // It dies before HEALTHY_RUN, without becoming ready.
    }
    assert_eq!(delays, [0, 200, 400, 800, 1600]);
    assert_eq!(sim.core.slots[0].restarts, 5);
    // A worker that ran long enough starts the count again.
    let w = sim.worker(0);
    sim.ready(w, "v1");
    sim.now += Duration::from_secs(11);
    let fx = sim.gone(w, Gone::Exited("signal 9".into()));
    assert!(fx.iter().any(|e| matches!(e, Effect::Spawn { .. })));
}

#[test]
fn a_failed_spawn_is_retried_like_a_crash() {
    let mut sim = Sim::running(1);
    let w = sim.worker(0);
    sim.gone(w, Gone::Exited("signal 9".into()));
    let w = sim.worker(0);
    let fx = sim.gone(w, Gone::SpawnFailed("EMFILE".into()));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Spawn { .. })));
    assert!(!sim.core.is_done());
    let fx = sim.advance(Duration::from_millis(200));
    assert!(fx.iter().any(|e| matches!(e, Effect::Spawn { .. })));
}

#[test]
fn a_silent_worker_is_killed_but_a_stalled_primary_kills_nobody() {
    let mut sim = Sim::running(2);
    let (w0, w1) = (sim.worker(0), sim.worker(1));
    // The primary itself did not run for 35 s: reports are queued, not missing.
    let fx = sim.advance(Duration::from_secs(35));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Kill(_))), "{fx:?}");
    // Now worker 1 keeps talking and worker 0 does not.
    let mut killed = Vec::new();
    for _ in 0..11 {
        sim.now += Duration::from_secs(1);
        let mut fx = sim.input(Input::FromWorker(
            w1,
            ToPrimary::Stats {
                requests: 1,
                in_flight: 0,
                counts: Default::default(),
            },
        ));
        fx.extend(sim.input(Input::Tick));
        killed.extend(fx.into_iter().filter_map(|e| match e {
            Effect::Kill(w) => Some(w),
            _ => None,
        }));
    }
    assert_eq!(killed, [w0]);
}

#[test]
fn status_waits_for_fresh_counts_with_a_deadline() {
    let mut sim = Sim::running(2);
    let (w0, w1) = (sim.worker(0), sim.worker(1));
    let fx = sim.input(Input::Control(5, Request::Status));
    assert!(fx.contains(&Effect::Send(w0, ToWorker::Report)));
    assert!(reply(&fx, 5).is_none());
    let fx = sim.input(Input::FromWorker(
        w0,
        ToPrimary::Stats {
            requests: 42,
            in_flight: 1,
            counts: Default::default(),
        },
    ));
    assert!(reply(&fx, 5).is_none());
    let fx = sim.input(Input::FromWorker(
        w1,
        ToPrimary::Stats {
            requests: 8,
            in_flight: 0,
            counts: Default::default(),
        },
    ));
    let Some(Reply::Status(s)) = reply(&fx, 5) else {
        panic!("{fx:?}")
    };
    assert_eq!(s.workers[0].requests, 42);
    assert_eq!(s.workers[1].requests, 8);
    // A worker that does not answer delays the reply only to the deadline.
    sim.input(Input::Control(6, Request::Status));
    let fx = sim.advance(Duration::from_millis(300));
    assert!(matches!(reply(&fx, 6), Some(Reply::Status(_))));
}

#[test]
fn shutdown_drains_every_worker_then_exits() {
    let mut sim = Sim::running(2);
    let job = sim.reload(3);
    let fx = sim.input(Input::Signal(SignalEvent::Shutdown));
    assert_eq!(fx.first(), Some(&Effect::StopListening));
    assert!(fx.contains(&Effect::Send(sim.worker(0), ToWorker::Drain)));
    assert!(fx.contains(&Effect::Send(sim.worker(1), ToWorker::Drain)));
    assert_eq!(
        reply(&fx, 3),
        Some(Reply::Refused {
            reason: Refusal::ShuttingDown
        })
    );
    assert!(!sim.core.accepting());
    assert!(sim.compiled(job, "v2").is_empty());
    let (w0, w1) = (sim.worker(0), sim.worker(1));
    sim.gone(w0, Gone::ChannelClosed);
    sim.gone(w0, Gone::Exited("exit status: 0".into()));
    let fx = sim.gone(w1, Gone::Exited("exit status: 0".into()));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Spawn { .. })));
    assert!(fx.contains(&Effect::Exit(Ok(()))), "{fx:?}");
}

#[test]
fn shutdown_kills_what_is_left_after_the_drain_timeout() {
    let mut sim = Sim::running(1);
    sim.input(Input::Signal(SignalEvent::Shutdown));
    let fx = sim.advance(Duration::from_secs(30));
    assert!(!fx.contains(&Effect::Exit(Ok(()))));
    let fx = sim.advance(KILL_GRACE);
    assert!(fx.contains(&Effect::Kill(sim.worker(0))));
    assert!(fx.contains(&Effect::Exit(Ok(()))));
    assert_eq!(sim.core.poll_timeout(), None);
}

#[test]
fn workers_at_capacity_get_no_connections_and_the_listener_pauses() {
    let mut sim = Sim::running(2);
    let (w0, w1) = (sim.worker(0), sim.worker(1));
    sim.input(Input::FromWorker(w0, ToPrimary::Capacity { full: true }));
    let fx = sim.input(Input::Accepted(1));
    assert_eq!(
        fx,
        [Effect::SendConn {
            worker: w1,
            conn: 1
        }]
    );
    assert!(sim.core.accepting());
    sim.input(Input::FromWorker(w1, ToPrimary::Capacity { full: true }));
    assert!(
        !sim.core.accepting(),
        "every worker is full: stop accepting"
    );
    // One accepted just before waits in the primary, not closed.
    let fx = sim.input(Input::Accepted(2));
    assert!(fx.is_empty());
    let fx = sim.input(Input::FromWorker(w1, ToPrimary::Capacity { full: false }));
    assert_eq!(
        fx,
        [Effect::SendConn {
            worker: w1,
            conn: 2
        }]
    );
    assert!(sim.core.accepting());
}

/// An app of handlers `api` and `site`, at these versions.
fn two(api: &str, site: &str) -> Release {
    let handlers = vec![
        handler("api", api, &format!("digest-of-api-{api}")),
        handler("site", site, &format!("digest-of-site-{site}")),
    ];
    Release::new(App::new(handlers, true), false, Duration::ZERO)
}

#[test]
fn one_handler_reloads_and_rolls_back_alone_and_unknown_names_are_refused() {
    let first = two("a1", "s1");
    let mut sim = Sim::running_on(1, first.clone());
    let w = sim.worker(0);
    // A file event of one handler compiles that handler alone, on the live app.
    sim.input(Input::FileChanged(Scope::handler("site")));
    let fx = sim.advance(Duration::from_millis(300));
    let (job, scope, base) = fx
        .iter()
        .find_map(|e| match e {
            Effect::Compile { job, scope, base } => Some((*job, scope.clone(), base.clone())),
            _ => None,
        })
        .expect("a compile starts");
    assert_eq!(scope, Scope::handler("site"));
    assert_eq!(*base, first.app);
    let second = two("a1", "s2");
    let fx = sim.input(Input::Compiled {
        job,
        result: Ok(second.clone()),
    });
    assert_eq!(load(&fx), Some((w, second.version.clone())));
    sim.loaded(w, &second.version);
    let status = sim.core.status(sim.now);
    let site = &status.handlers[1];
    assert_eq!((site.name.as_str(), site.version.as_str()), ("site", "s2"));
    assert_eq!(site.previous.as_deref(), Some("s1"));
    assert!(site.last_deploy.as_ref().is_some_and(|d| d.ok()));
    assert_eq!(status.handlers[0].previous, None, "api did not change");
    assert_eq!(status.handlers[0].last_deploy, None);
    // Names the app does not have are refused, naming the ones it has.
    for request in [
        Request::Reload {
            handler: Some("nope".into()),
        },
        Request::Rollback {
            handler: Some("nope".into()),
        },
    ] {
        let fx = sim.input(Input::Control(7, request));
        assert_eq!(
            reply(&fx, 7),
            Some(Reply::Refused {
                reason: Refusal::UnknownHandler {
                    name: "nope".into(),
                    known: vec!["api".into(), "site".into()],
                }
            })
        );
    }
    // `api` has nothing to roll back to; `site` goes back to s1, api stays.
    let fx = sim.input(Input::Control(
        8,
        Request::Rollback {
            handler: Some("api".into()),
        },
    ));
    assert_eq!(
        reply(&fx, 8),
        Some(Reply::Refused {
            reason: Refusal::NoPreviousVersion
        })
    );
    let fx = sim.input(Input::Control(
        9,
        Request::Rollback {
            handler: Some("site".into()),
        },
    ));
    let target = fx
        .iter()
        .find_map(|e| match e {
            Effect::Send(_, ToWorker::Load { app, .. }) => Some(app.clone()),
            _ => None,
        })
        .expect("a roll starts");
    assert_eq!(*target, first.app, "only site went back");
    sim.loaded(w, &target.id);
    assert_eq!(sim.core.deploys.current().version, first.version);
    assert!(sim.core.ready());
}

#[test]
fn a_handler_removed_and_added_again_has_no_version_to_roll_back_to() {
    let first = two("a1", "s1");
    let mut sim = Sim::running_on(1, first.clone());
    let w = sim.worker(0);
    let deploy = |sim: &mut Sim, release: Release| {
        let job = sim.reload(1);
        sim.input(Input::Compiled {
            job,
            result: Ok(release.clone()),
        });
        sim.loaded(w, &release.version);
        assert_eq!(sim.core.live().version, release.version);
    };
    deploy(&mut sim, two("a1", "s2"));
    let site = |sim: &Sim| sim.core.status(sim.now).handlers[1].clone();
    assert_eq!(site(&sim).previous.as_deref(), Some("s1"));
    // `site` leaves the app, then comes back: its old versions are not its.
    let api_alone = Release::new(
        App::new(vec![handler("api", "a1", "digest-of-api-a1")], true),
        false,
        Duration::ZERO,
    );
    deploy(&mut sim, api_alone);
    deploy(&mut sim, two("a1", "s3"));
    assert_eq!(site(&sim).previous, None);
    let fx = sim.input(Input::Control(
        2,
        Request::Rollback {
            handler: Some("site".into()),
        },
    ));
    assert_eq!(
        reply(&fx, 2),
        Some(Reply::Refused {
            reason: Refusal::NoPreviousVersion
        })
    );
}

#[test]
fn a_manifest_read_again_is_smoke_checked_whole_by_the_canary_alone() {
    let mut sim = Sim::running_on(2, two("a1", "s1"));
    // (worker, smoke_all) of the Load in these effects.
    let load = |fx: &[Effect]| {
        fx.iter().find_map(|e| match e {
            Effect::Send(w, ToWorker::Load { smoke_all, .. }) => Some((*w, *smoke_all)),
            _ => None,
        })
    };
    let deploy = |sim: &mut Sim, scope: Scope, next: Release| -> Vec<bool> {
        sim.input(Input::FileChanged(scope));
        let fx = sim.advance(Duration::from_millis(300));
        let job = compile_job(&fx).expect("a compile starts");
        let mut fx = sim.input(Input::Compiled {
            job,
            result: Ok(next.clone()),
        });
        let mut smoke = Vec::new();
        while let Some((w, all)) = load(&fx) {
            smoke.push(all);
            fx = sim.loaded(w, &next.version);
        }
        assert_eq!(sim.core.live().version, next.version);
        smoke
    };
    // The manifest changed: the canary checks every handler, the next worker
    // only what it loads.
    assert_eq!(deploy(&mut sim, Scope::All, two("a1", "s2")), [true, false]);
    // One handler's file changed: nobody checks the others.
    let smoke = deploy(&mut sim, Scope::handler("site"), two("a1", "s3"));
    assert_eq!(smoke, [false, false]);
}
