//! Property test: random sequences of inputs against a simulated world of
//! workers that answer late, never, or die, with the invariants checked
//! after every step and convergence checked once the inputs stop. The
//! world serves one handler, or a manifest of three whose files change,
//! reload and roll back one at a time, at random.

use std::collections::BTreeMap;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::tests::{artifact, handler, settings};
use super::*;
use crate::config::app::App;

/// What a simulated worker (or compile) owes the core.
#[derive(Debug, Clone)]
enum Owed {
    Ready(WorkerId),
    Load(WorkerId, Box<App>),
    Conn(WorkerId, ConnId),
    Drain(WorkerId),
    Report(WorkerId),
    /// The process is dead: its channel closes and it is reaped.
    Exit(WorkerId),
    Compile(JobId, Scope, Box<App>),
}

impl Owed {
    /// Worker answers can be lost (the worker hangs); exits and compiles
    /// always happen (the kernel reaps, the compile child has a timeout).
    fn worker(&self) -> Option<WorkerId> {
        match self {
            Owed::Ready(w) | Owed::Load(w, _) | Owed::Conn(w, _) | Owed::Drain(w) => Some(*w),
            Owed::Report(w) => Some(*w),
            Owed::Exit(_) | Owed::Compile(..) => None,
        }
    }
}

struct Proc {
    version: String,
    alive: bool,
    /// It stopped answering: no heartbeats either.
    hung: bool,
}

struct World {
    core: Core,
    now: Instant,
    owed: Vec<Owed>,
    procs: HashMap<WorkerId, Proc>,
    /// The version each handler's file holds now, by handler name.
    files: BTreeMap<String, String>,
    /// A manifest of several handlers (else the one-handler mode).
    manifest: bool,
    next_conn: ConnId,
    accepted: HashSet<ConnId>,
    closed: HashSet<ConnId>,
    /// Connections delivered to a worker and not yet acknowledged.
    held_by: HashMap<ConnId, WorkerId>,
    next_control: ControlId,
    exited: bool,
}

const BAD: &str = "bad";
const GARBAGE: &str = "garbage";
const HANDLERS: [&str; 3] = ["api", "site", "admin"];

/// What the shell's compile job makes of the files: every handler's file
/// (Scope::All) or only those named, on top of `base`; a file of garbage
/// refuses the whole job, as the real one does.
fn build(
    files: &BTreeMap<String, String>,
    scope: &Scope,
    base: Option<&App>,
    manifest: bool,
) -> Result<Release, String> {
    if !manifest {
        return match files["main"].as_str() {
            GARBAGE => Err("not a WebAssembly file".into()),
            v => Ok(artifact(v)),
        };
    }
    let read = |name: &str| match files[name].as_str() {
        GARBAGE => Err(format!("handler `{name}`: not a WebAssembly file")),
        v => Ok(handler(name, v, &format!("digest-of-{name}-{v}"))),
    };
    let handlers = match (scope, base) {
        (Scope::Handlers(names), Some(base)) => base
            .handlers
            .iter()
            .map(|h| {
                if names.contains(h.name()) {
                    read(h.name())
                } else {
                    Ok(h.clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => HANDLERS.iter().map(|n| read(n)).collect::<Result<_, _>>()?,
    };
    Ok(Release::new(
        App::new(handlers, true),
        false,
        Duration::ZERO,
    ))
}

impl World {
    fn new(workers: usize, manifest: bool) -> World {
        let now = Instant::now();
        if std::env::var_os("CORE_TRACE").is_some() {
            eprintln!("=== CASE");
        }
        let names: &[&str] = if manifest { &HANDLERS } else { &["main"] };
        let files = names
            .iter()
            .map(|n| (n.to_string(), "v1".to_string()))
            .collect();
        let first = if manifest {
            build(&files, &Scope::All, None, true).expect("v1 compiles")
        } else {
            artifact("v1")
        };
        let (core, fx) = Core::new(settings(workers), first, now);
        let mut w = World {
            core,
            now,
            owed: Vec::new(),
            procs: HashMap::new(),
            files,
            manifest,
            next_conn: 1,
            accepted: HashSet::new(),
            closed: HashSet::new(),
            held_by: HashMap::new(),
            next_control: 1,
            exited: false,
        };
        w.perform(fx);
        w.settle(400);
        w
    }

    fn input(&mut self, input: Input) {
        if std::env::var_os("CORE_TRACE").is_some() {
            eprintln!("IN {input:?}");
        }
        let fx = self.core.handle(self.now, input);
        if std::env::var_os("CORE_TRACE").is_some() {
            eprintln!("   -> {fx:?}");
        }
        self.perform(fx);
        self.check();
    }

    fn perform(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Spawn { worker, release } => {
                    self.procs.insert(
                        worker,
                        Proc {
                            version: release.version,
                            alive: true,
                            hung: false,
                        },
                    );
                    self.owed.push(Owed::Ready(worker));
                }
                Effect::SendConn { worker, conn } => {
                    assert!(!self.closed.contains(&conn), "closed conn {conn} sent");
                    // As the shell does: a send to a killed worker fails
                    // (reported back); only delivered sends hand a connection.
                    if self.procs.get(&worker).is_some_and(|p| p.alive) {
                        if let Some(holder) = self.held_by.get(&conn) {
                            assert!(
                                !self.procs[holder].alive,
                                "conn {conn} delivered to {worker:?} while {holder:?} holds it"
                            );
                        }
                        self.held_by.insert(conn, worker);
                        self.owed.push(Owed::Conn(worker, conn));
                    } else {
                        self.input(Input::ConnNotSent {
                            conn,
                            worker,
                            full: false,
                        });
                    }
                }
                Effect::CloseConn(conn) => {
                    assert!(self.closed.insert(conn), "conn {conn} closed twice");
                    self.held_by.remove(&conn);
                }
                Effect::Send(worker, ToWorker::Load { app, .. }) => {
                    self.owed.push(Owed::Load(worker, app))
                }
                Effect::Send(worker, ToWorker::Drain) => self.owed.push(Owed::Drain(worker)),
                Effect::Send(worker, ToWorker::Report) => self.owed.push(Owed::Report(worker)),
                Effect::Send(_, other) => panic!("unexpected message {other:?}"),
                Effect::Kill(worker) => self.kill(worker),
                Effect::Compile { job, scope, base } => {
                    self.owed.push(Owed::Compile(job, scope, base))
                }
                Effect::Exit(result) => {
                    assert_eq!(result, Ok(()));
                    self.exited = true;
                }
                Effect::Reply(..) | Effect::Announce(_) | Effect::StopListening => {}
            }
        }
    }

    fn kill(&mut self, worker: WorkerId) {
        if let Some(p) = self.procs.get_mut(&worker)
            && p.alive
        {
            p.alive = false;
            self.owed.push(Owed::Exit(worker));
        }
    }

    /// Delivers what is owed at position `i`.
    fn deliver(&mut self, i: usize) {
        let owed = self.owed.remove(i);
        let alive = |w: &WorkerId, s: &Self| s.procs.get(w).is_some_and(|p| p.alive && !p.hung);
        match owed {
            Owed::Ready(w) if alive(&w, self) => {
                let version = self.procs[&w].version.clone();
                self.input(Input::Spawned { worker: w, pid: 1 });
                self.input(Input::FromWorker(w, ToPrimary::Ready { version }));
            }
            Owed::Load(w, app) if alive(&w, self) => {
                let version = app.id.clone();
                // A handler that fails its smoke check refuses the app.
                let msg = if app.handlers.iter().any(|h| h.version.id == BAD) {
                    ToPrimary::LoadFailed {
                        version,
                        error: "smoke check failed".into(),
                    }
                } else {
                    self.procs.get_mut(&w).unwrap().version = version.clone();
                    ToPrimary::Loaded { version }
                };
                self.input(Input::FromWorker(w, msg));
            }
            Owed::Conn(w, conn) if alive(&w, self) => {
                self.input(Input::FromWorker(
                    w,
                    ToPrimary::Accepted { ids: vec![conn] },
                ));
            }
            Owed::Drain(w) if alive(&w, self) => {
                self.kill(w);
            }
            Owed::Report(w) if alive(&w, self) => {
                self.input(Input::FromWorker(
                    w,
                    ToPrimary::Stats {
                        requests: 0,
                        in_flight: 0,
                        counts: Default::default(),
                    },
                ));
            }
            Owed::Exit(w) => {
                self.input(Input::WorkerGone(w, Gone::ChannelClosed));
                self.input(Input::WorkerGone(w, Gone::Exited("signal 9".into())));
            }
            Owed::Compile(job, scope, base) => {
                let result = build(&self.files, &scope, Some(&base), self.manifest);
                self.input(Input::Compiled { job, result });
            }
            // Owed by a dead or hung worker: never comes.
            _ => {}
        }
    }

    /// Live, answering workers report every second, as real ones do.
    fn heartbeats(&mut self) {
        let talking: Vec<WorkerId> = self
            .procs
            .iter()
            .filter(|(_, p)| p.alive && !p.hung)
            .map(|(w, _)| *w)
            .collect();
        for w in talking {
            self.input(Input::FromWorker(
                w,
                ToPrimary::Stats {
                    requests: 0,
                    in_flight: 0,
                    counts: Default::default(),
                },
            ));
        }
    }

    /// Everything owed is delivered, time passes, heartbeats flow; returns
    /// the number of 100 ms rounds until nothing is left to do.
    fn settle(&mut self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            while !self.owed.is_empty() {
                self.deliver(0);
            }
            if self.quiet() {
                return round;
            }
            self.now += Duration::from_millis(100);
            if round % 10 == 0 {
                self.heartbeats();
            }
            self.input(Input::Tick);
        }
        max_rounds
    }

    fn quiet(&self) -> bool {
        let c = &self.core;
        // Hung processes are still to be found out (liveness, deadlines).
        let hung = self.procs.values().any(|p| p.alive && p.hung);
        self.owed.is_empty()
            && !hung
            && c.queue.is_empty()
            && c.in_transit.is_empty()
            && (self.exited
                || (!c.deploys.busy()
                    && c.debounce_until.is_none()
                    && c.pending_target.is_none()
                    && c.slots.len() == c.target
                    && c.slots.iter().all(|s| s.state == WorkerState::Ready)))
    }

    /// The name of handler `i` (modulo how many there are).
    fn name(&self, i: usize) -> String {
        let names: Vec<&String> = self.files.keys().collect();
        names[i % names.len()].clone()
    }

    fn control(&mut self, request: Request) {
        let id = self.next_control;
        self.next_control += 1;
        self.input(Input::Control(id, request));
    }

    /// The invariants that hold after every input.
    fn check(&self) {
        let c = &self.core;
        assert!(
            !(c.deploys.compiling.is_some() && c.deploys.roll.is_some()),
            "a compile and a roll at once"
        );
        let queued: HashSet<ConnId> = c.queue.iter().copied().collect();
        assert_eq!(queued.len(), c.queue.len(), "a connection queued twice");
        for conn in &self.accepted {
            let places = [
                c.in_transit.contains_key(conn),
                queued.contains(conn),
                self.closed.contains(conn),
            ];
            assert_eq!(
                places.iter().filter(|p| **p).count(),
                1,
                "connection {conn} is in {places:?} (in transit, queued, closed)"
            );
        }
        for (conn, w) in &c.in_transit {
            let slot = &c.slots[w.index];
            assert!(
                slot.generation == w.generation && slot.state != WorkerState::Exited,
                "connection {conn} in transit to a gone worker {w:?}"
            );
        }
        if c.deploys.roll.is_some() {
            assert!(c.poll_timeout().is_some(), "a roll without a deadline");
        }
        assert!(c.target >= 1 && c.target <= c.settings.max_workers);
    }
}

#[derive(Debug, Clone)]
enum Step {
    Accept,
    Deliver(usize),
    /// The worker owing this hangs: it never answers again.
    Hang(usize),
    /// The worker owing this `Ready` finds its artifact damaged instead.
    Damage(usize),
    Kill(usize),
    /// A handler's file (by index) gets a new version.
    WriteFile(usize, &'static str),
    /// The manifest changes: everything is read again.
    WriteManifest,
    Reload,
    ReloadHandler(usize),
    Rollback,
    RollbackHandler(usize),
    Scale(usize),
    Ttin,
    Ttou,
    Status,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Accept),
        8 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Hang),
        1 => any::<usize>().prop_map(Step::Damage),
        2 => any::<usize>().prop_map(Step::Kill),
        3 => (any::<usize>(), prop::sample::select(vec!["v1", "v2", "v3", BAD, GARBAGE]))
            .prop_map(|(h, v)| Step::WriteFile(h, v)),
        1 => Just(Step::WriteManifest),
        1 => Just(Step::Reload),
        1 => any::<usize>().prop_map(Step::ReloadHandler),
        1 => Just(Step::Rollback),
        1 => any::<usize>().prop_map(Step::RollbackHandler),
        1 => (1usize..=4).prop_map(Step::Scale),
        1 => Just(Step::Ttin),
        1 => Just(Step::Ttou),
        1 => Just(Step::Status),
        3 => (1u64..3000).prop_map(Step::Wait),
    ]
}

fn run(world: &mut World, steps: &[Step]) {
    for s in steps {
        match s {
            Step::Accept => {
                let conn = world.next_conn;
                world.next_conn += 1;
                if world.core.accepting() {
                    world.accepted.insert(conn);
                    world.input(Input::Accepted(conn));
                }
            }
            Step::Deliver(i) if !world.owed.is_empty() => {
                let i = i % world.owed.len();
                world.deliver(i);
            }
            Step::Hang(i) if !world.owed.is_empty() => {
                let i = i % world.owed.len();
                if let Some(w) = world.owed[i].worker() {
                    world.owed.remove(i);
                    if let Some(p) = world.procs.get_mut(&w) {
                        p.hung = true;
                    }
                }
            }
            Step::Damage(i) => {
                let starting: Vec<usize> = (0..world.owed.len())
                    .filter(|&k| matches!(world.owed[k], Owed::Ready(_)))
                    .collect();
                if let Some(&k) = starting.get(i % starting.len().max(1)) {
                    let Owed::Ready(w) = world.owed.remove(k) else {
                        unreachable!("filtered above")
                    };
                    world.input(Input::Spawned { worker: w, pid: 1 });
                    world.input(Input::FromWorker(
                        w,
                        ToPrimary::ArtifactDamaged {
                            error: "does not match the digest".into(),
                        },
                    ));
                    world.kill(w);
                }
            }
            Step::Kill(i) => {
                let live: Vec<WorkerId> = world
                    .procs
                    .iter()
                    .filter(|(_, p)| p.alive)
                    .map(|(w, _)| *w)
                    .collect();
                if !live.is_empty() {
                    let mut live = live;
                    live.sort();
                    world.kill(live[i % live.len()]);
                }
            }
            Step::WriteFile(h, v) => {
                let name = world.name(*h);
                world.files.insert(name.clone(), v.to_string());
                let scope = if world.manifest {
                    Scope::handler(&name)
                } else {
                    Scope::All
                };
                world.input(Input::FileChanged(scope));
            }
            Step::WriteManifest => world.input(Input::FileChanged(Scope::All)),
            Step::Reload => world.control(Request::Reload { handler: None }),
            Step::ReloadHandler(h) => {
                let handler = Some(world.name(*h));
                world.control(Request::Reload { handler })
            }
            Step::Rollback => world.control(Request::Rollback { handler: None }),
            Step::RollbackHandler(h) => {
                let handler = Some(world.name(*h));
                world.control(Request::Rollback { handler })
            }
            Step::Scale(n) => world.control(Request::Scale { workers: *n }),
            Step::Ttin => world.input(Input::Signal(SignalEvent::ScaleUp)),
            Step::Ttou => world.input(Input::Signal(SignalEvent::ScaleDown)),
            Step::Status => world.control(Request::Status),
            Step::Wait(ms) => {
                world.now += Duration::from_millis(*ms);
                world.input(Input::Tick);
            }
            Step::Deliver(_) | Step::Hang(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_core_keeps_its_invariants_and_converges(
        workers in 1usize..=3,
        manifest in any::<bool>(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let mut world = World::new(workers, manifest);
        run(&mut world, &steps);
        // The inputs stop: within a bounded time (load deadline 20 s,
        // liveness 10 s, backoff at most 30 s, drain 35 s, a few rolls),
        // every roll ends and the cluster converges.
        let rounds = world.settle(3000);
        prop_assert!(rounds < 3000, "no convergence: {:?}", world.core.status(world.now));
        let c = &world.core;
        let current = c.deploys.current().clone();
        for h in &current.app.handlers {
            prop_assert_ne!(h.version.id.as_str(), BAD, "a refused handler went live");
        }
        for s in &c.slots {
            prop_assert_eq!(s.state, WorkerState::Ready);
            prop_assert_eq!(&s.version, &current.version);
        }
        prop_assert!(c.queue.is_empty() && c.in_transit.is_empty());
        prop_assert!(c.ready());
        // No live process serves anything but the current version.
        for p in world.procs.values().filter(|p| p.alive && !p.hung) {
            prop_assert_eq!(&p.version, &current.version);
        }
        // One more deploy, of one handler's file, reaches every worker and
        // changes that handler alone.
        let name = world.name(0);
        world.files.insert(name.clone(), "v9".into());
        let scope = if manifest { Scope::handler(&name) } else { Scope::All };
        world.input(Input::FileChanged(scope));
        prop_assert!(world.settle(3000) < 3000);
        let after = world.core.deploys.current().clone();
        for h in &after.app.handlers {
            let before = current.app.handler(h.name()).expect("same handlers");
            if h.name() == name {
                prop_assert_eq!(h.version.id.as_str(), "v9");
            } else {
                prop_assert_eq!(h, before, "another handler changed");
            }
        }
        for s in &world.core.slots {
            prop_assert_eq!(&s.version, &after.version);
        }
        // And a shutdown ends.
        world.input(Input::Signal(SignalEvent::Shutdown));
        world.settle(3000);
        prop_assert!(world.exited);
    }
}
