//! Property test: random sequences of inputs against a simulated world of
//! workers that answer late, never, or die, with the invariants checked
//! after every step and convergence checked once the inputs stop.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::tests::{artifact, settings};
use super::*;

/// What a simulated worker (or compile) owes the core.
#[derive(Debug, Clone)]
enum Owed {
    Ready(WorkerId),
    Load(WorkerId, String),
    Conn(WorkerId, ConnId),
    Drain(WorkerId),
    Report(WorkerId),
    /// The process is dead: its channel closes and it is reaped.
    Exit(WorkerId),
    Compile(JobId),
}

impl Owed {
    /// Worker answers can be lost (the worker hangs); exits and compiles
    /// always happen (the kernel reaps, the compile child has a timeout).
    fn worker(&self) -> Option<WorkerId> {
        match self {
            Owed::Ready(w) | Owed::Load(w, _) | Owed::Conn(w, _) | Owed::Drain(w) => Some(*w),
            Owed::Report(w) => Some(*w),
            Owed::Exit(_) | Owed::Compile(_) => None,
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
    /// The version the handler file holds now.
    file: String,
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

impl World {
    fn new(workers: usize) -> World {
        let now = Instant::now();
        if std::env::var_os("CORE_TRACE").is_some() {
            eprintln!("=== CASE");
        }
        let (core, fx) = Core::new(settings(workers), artifact("v1"), now);
        let mut w = World {
            core,
            now,
            owed: Vec::new(),
            procs: HashMap::new(),
            file: "v1".into(),
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
                Effect::Spawn { worker, artifact } => {
                    self.procs.insert(
                        worker,
                        Proc {
                            version: artifact.version,
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
                Effect::Send(worker, ToWorker::Load(version)) => {
                    self.owed.push(Owed::Load(worker, version.id))
                }
                Effect::Send(worker, ToWorker::Drain) => self.owed.push(Owed::Drain(worker)),
                Effect::Send(worker, ToWorker::Report) => self.owed.push(Owed::Report(worker)),
                Effect::Send(_, other) => panic!("unexpected message {other:?}"),
                Effect::Kill(worker) => self.kill(worker),
                Effect::Compile(job) => self.owed.push(Owed::Compile(job)),
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
            Owed::Load(w, version) if alive(&w, self) => {
                let msg = if version == BAD {
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
            Owed::Compile(job) => {
                let result = if self.file == GARBAGE {
                    Err("not a WebAssembly file".into())
                } else {
                    Ok(artifact(&self.file))
                };
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
    WriteFile(&'static str),
    Reload,
    Rollback,
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
        2 => prop::sample::select(vec!["v1", "v2", "v3", BAD, GARBAGE]).prop_map(Step::WriteFile),
        2 => Just(Step::Reload),
        1 => Just(Step::Rollback),
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
            Step::WriteFile(v) => {
                world.file = v.to_string();
                world.input(Input::FileChanged);
            }
            Step::Reload => world.control(Request::Reload),
            Step::Rollback => world.control(Request::Rollback),
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
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let mut world = World::new(workers);
        run(&mut world, &steps);
        // The inputs stop: within a bounded time (load deadline 20 s,
        // liveness 10 s, backoff at most 30 s, drain 35 s, a few rolls),
        // every roll ends and the cluster converges.
        let rounds = world.settle(3000);
        prop_assert!(rounds < 3000, "no convergence: {:?}", world.core.status(world.now));
        let c = &world.core;
        let current = c.deploys.current().version.clone();
        prop_assert_ne!(current.as_str(), BAD);
        for s in &c.slots {
            prop_assert_eq!(s.state, WorkerState::Ready);
            prop_assert_eq!(&s.version, &current);
        }
        prop_assert!(c.queue.is_empty() && c.in_transit.is_empty());
        // No live process serves anything but the current version.
        for p in world.procs.values().filter(|p| p.alive && !p.hung) {
            prop_assert_eq!(&p.version, &current);
        }
        // One more deploy reaches every worker.
        world.file = "v9".into();
        world.control(Request::Reload);
        prop_assert!(world.settle(3000) < 3000);
        for s in &world.core.slots {
            prop_assert_eq!(s.version.as_str(), "v9");
        }
        // And a shutdown ends.
        world.input(Input::Signal(SignalEvent::Shutdown));
        world.settle(3000);
        prop_assert!(world.exited);
    }
}
