//! One conformance suite, run against every [`LinkState`] store: each `story_*` function
//! exercises one behaviour through the trait only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::HashMap;
use std::sync::Arc;

use flwr_proto::{
    configs_record_value, scalar, ConfigsRecord, ConfigsRecordValue, Context, Error, Node,
    RecordSet, RunStatus, Scalar, Task, TaskIns, TaskRes,
};
use flwr_state::lifecycle::{COMPLETED, FAILED, FINISHED, PENDING, RUNNING, STARTING, STOPPED};
use flwr_state::task::{
    MESSAGE_UNAVAILABLE, MESSAGE_UNAVAILABLE_REASON, REPLY_MESSAGE_UNAVAILABLE,
    REPLY_MESSAGE_UNAVAILABLE_REASON,
};
use flwr_state::{
    guard_denial, isoformat, Clock, Guard, InMemoryLinkState, LinkState, ManualClock, NodeCounts,
    PostgresLinkState, PushTaskInsError, SqliteLinkState, StateError, TaskCounts, TaskInsDropped,
    TaskInsRejection,
};

/// The injected clock the stories drive.
type TestClock = ManualClock;

/// 2024-06-01T00:00:00Z: after the minimum task timestamp.
const T0: f64 = 1_717_200_000.0;

// ----- helpers -----

fn status(status: &str, sub_status: &str) -> RunStatus {
    RunStatus {
        status: status.to_owned(),
        sub_status: sub_status.to_owned(),
        details: String::new(),
    }
}

/// One TaskIns pushed on its own, answered as the reference's `store_task_ins`: its id, or
/// `None` when it was refused or dropped.
trait StoreOne {
    fn store_one(&self, task_ins: TaskIns) -> Result<Option<String>, StateError>;
}

impl<S: LinkState + ?Sized> StoreOne for S {
    fn store_one(&self, task_ins: TaskIns) -> Result<Option<String>, StateError> {
        match self.store_task_ins(task_ins.run_id, vec![task_ins]) {
            Ok(mut outcomes) => Ok(outcomes.pop().and_then(Result::ok)),
            Err(PushTaskInsError::Rejected(_)) => Ok(None),
            Err(PushTaskInsError::State(error)) => Err(error),
            Err(error) => panic!("unexpected {error}"),
        }
    }
}

fn new_run(state: &dyn LinkState) -> u64 {
    state
        .create_run(
            "flwr/app",
            "1.0.0",
            "ab",
            HashMap::new(),
            ConfigsRecord::default(),
            None,
        )
        .unwrap()
}

/// A run that has reached `running`.
fn running_run(state: &dyn LinkState) -> u64 {
    let run_id = new_run(state);
    assert!(state
        .update_run_status(run_id, status(STARTING, ""))
        .unwrap());
    assert!(state
        .update_run_status(run_id, status(RUNNING, ""))
        .unwrap());
    run_id
}

fn node(node_id: u64) -> Option<Node> {
    Some(Node {
        node_id,
        anonymous: node_id == 0,
    })
}

/// A valid TaskIns from the ServerApp to `consumer` (0 = anonymous).
fn task_ins(run_id: u64, consumer: u64, created_at: f64, ttl: f64) -> TaskIns {
    TaskIns {
        task_id: String::new(),
        group_id: "g1".to_owned(),
        run_id,
        task: Some(Task {
            producer: node(0),
            consumer: node(consumer),
            created_at,
            ttl,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

/// A valid reply from `producer` to the TaskIns `ins_id`.
fn task_res(run_id: u64, producer: u64, ins_id: &str, created_at: f64, ttl: f64) -> TaskRes {
    TaskRes {
        task_id: String::new(),
        group_id: "g1".to_owned(),
        run_id,
        task: Some(Task {
            producer: node(producer),
            consumer: node(0),
            created_at,
            ttl,
            ancestry: vec![ins_id.to_owned()],
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

// ----- stories -----

fn story_run_lifecycle(state: &dyn LinkState, clock: &TestClock) {
    assert!(state.runs().unwrap().is_empty());
    assert_eq!(state.pending_run_id().unwrap(), None);
    let run_id = new_run(state);
    assert_ne!(run_id, 0);
    let run = state.run(run_id).unwrap().unwrap();
    assert_eq!(run.run_id, run_id);
    assert_eq!(
        (&*run.fab_id, &*run.fab_version, &*run.fab_hash),
        ("flwr/app", "1.0.0", "ab")
    );
    assert_eq!(run.pending_at, isoformat(T0));
    assert_eq!(run.starting_at, "");
    assert_eq!(run.status, Some(status(PENDING, "")));
    assert_eq!(state.pending_run_id().unwrap(), Some(run_id));

    clock.advance(1.0);
    assert!(state
        .update_run_status(run_id, status(STARTING, ""))
        .unwrap());
    assert_eq!(state.pending_run_id().unwrap(), None);
    clock.advance(1.0);
    assert!(state
        .update_run_status(run_id, status(RUNNING, ""))
        .unwrap());
    clock.advance(1.5);
    let mut done = status(FINISHED, COMPLETED);
    done.details = "all good".to_owned();
    assert!(state.update_run_status(run_id, done.clone()).unwrap());
    let run = state.run(run_id).unwrap().unwrap();
    assert_eq!(run.starting_at, isoformat(T0 + 1.0));
    assert_eq!(run.running_at, isoformat(T0 + 2.0));
    assert_eq!(run.finished_at, "2024-06-01T00:00:03.500000+00:00");
    assert_eq!(run.status, Some(done));
    assert_eq!(state.run(run_id.wrapping_add(1)).unwrap(), None);
}

fn story_invalid_transitions(state: &dyn LinkState, _clock: &TestClock) {
    let run_id = new_run(state);
    for refused in [
        status(PENDING, ""),
        status(RUNNING, ""),
        status(FINISHED, COMPLETED),
    ] {
        assert!(!state.update_run_status(run_id, refused).unwrap());
    }
    let run = state.run(run_id).unwrap().unwrap();
    assert_eq!(run.status, Some(status(PENDING, "")));
    assert_eq!(run.finished_at, "");
    assert!(matches!(
        state.update_run_status(run_id.wrapping_add(1), status(STARTING, "")),
        Err(StateError::RunNotFound(_))
    ));
    // Stopped while pending: finished, and no longer reported pending.
    assert!(state
        .update_run_status(run_id, status(FINISHED, STOPPED))
        .unwrap());
    assert_eq!(state.pending_run_id().unwrap(), None);
    assert!(!state
        .update_run_status(run_id, status(STARTING, ""))
        .unwrap());
    assert!(!state
        .update_run_status(run_id, status(FINISHED, FAILED))
        .unwrap());
}

fn story_nodes_and_liveness(state: &dyn LinkState, clock: &TestClock) {
    let run_id = new_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let b = state.create_node(10.0, None).unwrap();
    assert_ne!(a, b);
    let mut both = vec![a, b];
    both.sort_unstable();
    assert_eq!(state.online_nodes(run_id).unwrap(), both);
    clock.advance(10.0);
    assert_eq!(state.online_nodes(run_id).unwrap(), vec![a]);
    assert!(state.acknowledge_ping(b, 30.0).unwrap());
    assert_eq!(state.online_nodes(run_id).unwrap(), both);
    assert!(!state.acknowledge_ping(12345, 30.0).unwrap());
    state.delete_node(a).unwrap();
    assert!(matches!(state.delete_node(a), Err(StateError::NodeNotFound(id)) if id == a));
    assert_eq!(state.online_nodes(run_id).unwrap(), vec![b]);
    assert!(matches!(
        state.online_nodes(run_id.wrapping_add(1)),
        Err(StateError::RunNotFound(_))
    ));
}

fn story_node_online(state: &dyn LinkState, clock: &TestClock) {
    let counts = |registered, online| NodeCounts { registered, online };
    assert_eq!(state.node_counts().unwrap(), counts(0, 0));
    let a = state.create_node(30.0, None).unwrap();
    let b = state.create_node(10.0, None).unwrap();
    assert!(state.is_node_online(a).unwrap());
    assert!(state.is_node_online(b).unwrap());
    assert_eq!(state.node_counts().unwrap(), counts(2, 2));
    assert!(!state.is_node_online(12345).unwrap());
    assert!(!state.is_node_online(0).unwrap());

    // Online means `online_until > now`: offline exactly when the interval has passed.
    clock.advance(10.0);
    assert!(!state.is_node_online(b).unwrap());
    assert!(state.is_node_online(a).unwrap());
    assert_eq!(state.node_counts().unwrap(), counts(2, 1));
    assert!(state.acknowledge_ping(b, 30.0).unwrap());
    assert!(state.is_node_online(b).unwrap());
    assert_eq!(state.node_counts().unwrap(), counts(2, 2));

    clock.advance(30.0);
    assert!(!state.is_node_online(a).unwrap());
    assert!(!state.is_node_online(b).unwrap());
    assert_eq!(state.node_counts().unwrap(), counts(2, 0));
    assert!(state.acknowledge_ping(a, 30.0).unwrap());
    assert!(state.is_node_online(a).unwrap());
    assert_eq!(state.node_counts().unwrap(), counts(2, 1));

    // A deleted node is neither online nor counted, even with time left on its interval.
    state.delete_node(a).unwrap();
    assert!(!state.is_node_online(a).unwrap());
    assert_eq!(state.node_counts().unwrap(), counts(1, 0));
    // Pulling TaskIns is not a heartbeat.
    assert!(state.task_ins_for_node(Some(b), 1).unwrap().is_empty());
    assert!(!state.is_node_online(b).unwrap());
}

/// Nodes registered by [`story_many_nodes`].
const MANY_NODES: usize = 20_000;

/// Answers stay right with many registered nodes and a queue for each of some of them.
fn story_many_nodes(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let key = |i: usize| format!("key-{i}").into_bytes();
    let nodes: Vec<u64> = (0..MANY_NODES)
        .map(|i| state.create_node(30.0, Some(&key(i))).unwrap())
        .collect();
    assert_eq!(
        state.node_counts().unwrap(),
        NodeCounts {
            registered: MANY_NODES,
            online: MANY_NODES
        }
    );
    for i in [0, 1, MANY_NODES / 2, MANY_NODES - 1] {
        assert_eq!(
            state.node_id_for_public_key(&key(i)).unwrap(),
            Some(nodes[i])
        );
    }

    // Only the even nodes keep pinging.
    clock.advance(20.0);
    for node_id in nodes.iter().step_by(2) {
        assert!(state.acknowledge_ping(*node_id, 30.0).unwrap());
    }
    clock.advance(20.0);
    let mut even: Vec<u64> = nodes.iter().step_by(2).copied().collect();
    even.sort_unstable();
    assert_eq!(state.online_nodes(run_id).unwrap(), even);
    assert_eq!(
        state.node_counts().unwrap(),
        NodeCounts {
            registered: MANY_NODES,
            online: MANY_NODES / 2
        }
    );
    for (i, node_id) in nodes.iter().enumerate().take(50) {
        assert_eq!(state.is_node_online(*node_id).unwrap(), i % 2 == 0, "{i}");
    }

    // One TaskIns for each of the first 100 nodes, and a second one for node 7.
    let now = clock.now();
    let mut queued = HashMap::new();
    for (i, node_id) in nodes.iter().enumerate().take(100) {
        let id = state
            .store_one(task_ins(run_id, *node_id, now, 600.0))
            .unwrap()
            .unwrap();
        queued.insert(id, i);
    }
    let second = state
        .store_one(task_ins(run_id, nodes[7], now, 600.0))
        .unwrap()
        .unwrap();
    let pulled = state.task_ins_for_node(Some(nodes[7]), 5).unwrap();
    assert_eq!(pulled.len(), 2);
    assert_eq!(queued.get(&pulled[0].task_id), Some(&7));
    assert_eq!(pulled[1].task_id, second);
    for ins in &pulled {
        assert_eq!(ins.task.as_ref().unwrap().consumer, node(nodes[7]));
    }
    assert!(state
        .task_ins_for_node(Some(nodes[7]), 5)
        .unwrap()
        .is_empty());
    assert!(state
        .task_ins_for_node(Some(nodes[MANY_NODES - 1]), 5)
        .unwrap()
        .is_empty());
    assert!(state.task_ins_for_node(None, 5).unwrap().is_empty());
    let got = state.task_ins_for_node(Some(nodes[42]), 5).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(queued.get(&got[0].task_id), Some(&42));

    // A deleted node drops out of every answer.
    state.delete_node(nodes[2]).unwrap();
    assert!(!state.is_node_online(nodes[2]).unwrap());
    assert_eq!(state.node_id_for_public_key(&key(2)).unwrap(), None);
    assert!(!state.online_nodes(run_id).unwrap().contains(&nodes[2]));
    assert_eq!(
        state.node_counts().unwrap(),
        NodeCounts {
            registered: MANY_NODES - 1,
            online: MANY_NODES / 2 - 1
        }
    );
}

fn story_task_roundtrip(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let node_id = state.create_node(30.0, None).unwrap();
    let ins_id = state
        .store_one(task_ins(run_id, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    let pulled = state.task_ins_for_node(Some(node_id), 1).unwrap();
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].task_id, ins_id);
    assert_eq!(pulled[0].task.as_ref().unwrap().delivered_at, isoformat(T0));
    assert!(state
        .task_ins_for_node(Some(node_id), 1)
        .unwrap()
        .is_empty());

    clock.advance(5.0);
    assert!(state
        .task_res(std::slice::from_ref(&ins_id))
        .unwrap()
        .is_empty());
    let res_id = state
        .store_task_res(task_res(run_id, node_id, &ins_id, T0 + 5.0, 3595.0))
        .unwrap()
        .unwrap();
    let replies = state.task_res(std::slice::from_ref(&ins_id)).unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].task_id, res_id);
    // The pair is gone: asking again yields "message unavailable".
    let again = state.task_res(&[ins_id]).unwrap();
    assert_eq!(again[0].run_id, 0);
    assert_eq!(state.task_counts().unwrap().task_ins, 0);
}

/// What a held `PullTaskRes` waits for: stored TaskIns without a reply, counted once, without
/// delivering or deleting anything.
fn story_replies_pending(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let node_id = state.create_node(30.0, None).unwrap();
    let first = state
        .store_one(task_ins(run_id, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    let second = state
        .store_one(task_ins(run_id, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    let asked = [
        first.clone(),
        second.clone(),
        first.to_uppercase(),
        uuid_like(9),
        "not a uuid".to_owned(),
    ];
    assert_eq!(state.replies_pending(&asked).unwrap(), 2);
    assert_eq!(state.task_ins_for_node(Some(node_id), 2).unwrap().len(), 2);
    clock.advance(1.0);
    state
        .store_task_res(task_res(run_id, node_id, &first, T0 + 1.0, 3599.0))
        .unwrap()
        .unwrap();
    assert_eq!(state.replies_pending(&asked).unwrap(), 1);
    assert_eq!(
        state.task_counts().unwrap(),
        TaskCounts {
            task_ins: 2,
            task_res: 1
        },
        "looking changes nothing"
    );
    assert_eq!(
        state.task_res(std::slice::from_ref(&first)).unwrap().len(),
        1
    );
    assert_eq!(
        state.replies_pending(&asked).unwrap(),
        1,
        "the answered pair is gone"
    );
}

fn story_logs(state: &dyn LinkState, clock: &TestClock) {
    let run_id = new_run(state);
    assert_eq!(
        state.serverapp_logs_after(run_id, 0.0).unwrap(),
        (String::new(), 0.0)
    );
    state.add_serverapp_log(run_id, "a").unwrap();
    clock.advance(1.0);
    state.add_serverapp_log(run_id, "b").unwrap();
    assert_eq!(
        state.serverapp_logs_after(run_id, 0.0).unwrap(),
        ("ab".to_owned(), T0 + 1.0)
    );
    assert_eq!(
        state.serverapp_logs_after(run_id, T0).unwrap(),
        ("b".to_owned(), T0 + 1.0)
    );
    assert!(matches!(
        state.add_serverapp_log(7, "x"),
        Err(StateError::RunNotFound(7))
    ));
}

fn story_context(state: &dyn LinkState, _clock: &TestClock) {
    let run_id = new_run(state);
    assert_eq!(state.serverapp_context(run_id).unwrap(), None);
    let context = Context {
        run_id,
        ..Context::default()
    };
    state
        .set_serverapp_context(run_id, context.clone())
        .unwrap();
    assert_eq!(state.serverapp_context(run_id).unwrap(), Some(context));
    assert!(matches!(
        state.set_serverapp_context(7, Context::default()),
        Err(StateError::RunNotFound(7))
    ));
}

/// `StartRun` stores the run and its context in one call; the context takes the new run id.
fn story_context_at_creation(state: &dyn LinkState, _clock: &TestClock) {
    let context = Context {
        run_id: 0,
        node_id: 0,
        ..Context::default()
    };
    let run_id = state
        .create_run(
            "flwr/app",
            "1.0.0",
            "ab",
            HashMap::new(),
            ConfigsRecord::default(),
            Some(context),
        )
        .unwrap();
    let stored = state.serverapp_context(run_id).unwrap().unwrap();
    assert_eq!(stored.run_id, run_id);
    let without = new_run(state);
    assert_eq!(state.serverapp_context(without).unwrap(), None);
}

fn story_invalid_sub_status_sticks(state: &dyn LinkState, _clock: &TestClock) {
    // The new sub-status is not validated, but a run whose current sub-status is
    // inconsistent accepts nothing further (BEHAVIOR.md §5.2 quirk).
    let run_id = new_run(state);
    let mut weird = status(STARTING, "weird");
    weird.details = "d1".to_owned();
    assert!(state.update_run_status(run_id, weird.clone()).unwrap());
    assert_eq!(state.run(run_id).unwrap().unwrap().status, Some(weird));
    assert!(!state
        .update_run_status(run_id, status(RUNNING, ""))
        .unwrap());
    assert!(!state
        .update_run_status(run_id, status(FINISHED, FAILED))
        .unwrap());
    // Details are overwritten on every accepted update.
    let other = running_run(state);
    let mut failed = status(FINISHED, FAILED);
    failed.details = "boom".to_owned();
    assert!(state.update_run_status(other, failed).unwrap());
    let stored = state.run(other).unwrap().unwrap().status.unwrap();
    assert_eq!(stored.details, "boom");
}

fn story_run_listing(state: &dyn LinkState, clock: &TestClock) {
    let override_config = HashMap::from([
        ("lr".to_owned(), scalar_double(0.1)),
        ("name".to_owned(), scalar_string("x")),
    ]);
    let federation_options = ConfigsRecord {
        data: HashMap::from([(
            "num-supernodes".to_owned(),
            ConfigsRecordValue {
                value: Some(configs_record_value::Value::Sint64(10)),
            },
        )]),
    };
    let first = state
        .create_run(
            "flwr/first",
            "2.0.0",
            "hash1",
            override_config.clone(),
            federation_options.clone(),
            None,
        )
        .unwrap();
    clock.advance(1.0);
    let second = new_run(state);
    clock.advance(1.0);
    let third = new_run(state);
    let ids: Vec<u64> = state.runs().unwrap().iter().map(|run| run.run_id).collect();
    assert_eq!(ids, vec![first, second, third]);
    let run = state.run(first).unwrap().unwrap();
    assert_eq!(run.override_config, override_config);
    assert_eq!(run.fab_id, "flwr/first");
    assert_eq!(
        state.federation_options(first).unwrap(),
        Some(federation_options)
    );
    assert_eq!(
        state.federation_options(second).unwrap(),
        Some(ConfigsRecord::default())
    );
    assert_eq!(state.federation_options(12345).unwrap(), None);
    // Oldest pending first; starting and stopped runs are not pending.
    assert_eq!(state.pending_run_id().unwrap(), Some(first));
    assert!(state
        .update_run_status(first, status(STARTING, ""))
        .unwrap());
    assert_eq!(state.pending_run_id().unwrap(), Some(second));
    assert!(state
        .update_run_status(second, status(FINISHED, STOPPED))
        .unwrap());
    assert_eq!(state.pending_run_id().unwrap(), Some(third));
    assert_eq!(
        state.runs().unwrap()[1].status,
        Some(status(FINISHED, STOPPED))
    );
}

fn story_guards(state: &dyn LinkState, _clock: &TestClock) {
    let run_id = new_run(state);
    let current = || state.run(run_id).unwrap().unwrap().status.unwrap();
    assert_eq!(
        guard_denial(&current(), Guard::RequireRunning).as_deref(),
        Some("Run is pending.")
    );
    assert_eq!(guard_denial(&current(), Guard::RejectFinished), None);
    assert!(state
        .update_run_status(run_id, status(STARTING, ""))
        .unwrap());
    assert_eq!(
        guard_denial(&current(), Guard::RequireRunning).as_deref(),
        Some("Run is starting.")
    );
    assert!(state
        .update_run_status(run_id, status(RUNNING, ""))
        .unwrap());
    assert_eq!(guard_denial(&current(), Guard::RequireRunning), None);
    assert!(state
        .update_run_status(run_id, status(FINISHED, STOPPED))
        .unwrap());
    for guard in [Guard::RequireRunning, Guard::RejectFinished] {
        assert_eq!(
            guard_denial(&current(), guard).as_deref(),
            Some("Run is finished. Stopped by user.")
        );
    }
}

fn story_concurrent_start(state: &dyn LinkState, _clock: &TestClock) {
    // PullServerAppInputs relies on pending -> starting being won by exactly one caller.
    let run_id = new_run(state);
    let wins = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    state
                        .update_run_status(run_id, status(STARTING, ""))
                        .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .filter(|won| *won)
            .count()
    });
    assert_eq!(wins, 1);
}

fn story_task_ins_validation(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let node_id = state.create_node(30.0, None).unwrap();
    let valid = task_ins(run_id, node_id, T0, 60.0);
    let reject = |mutate: &dyn Fn(&mut TaskIns)| {
        let mut ins = valid.clone();
        mutate(&mut ins);
        assert_eq!(state.store_one(ins.clone()).unwrap(), None, "{ins:?}");
    };
    reject(&|ins| ins.task_id = "already".to_owned());
    reject(&|ins| ins.task = None);
    reject(&|ins| task_mut(ins).created_at = 1_711_497_599.0);
    reject(&|ins| task_mut(ins).delivered_at = isoformat(T0));
    reject(&|ins| task_mut(ins).ttl = 0.0);
    reject(&|ins| task_mut(ins).ttl = -1.0);
    reject(&|ins| task_mut(ins).created_at = T0 - 60.0); // expires exactly now
    reject(&|ins| task_mut(ins).task_type = String::new());
    reject(&|ins| task_mut(ins).recordset = None);
    reject(&|ins| task_mut(ins).error = Some(Error::default()));
    reject(&|ins| task_mut(ins).consumer = None);
    reject(&|ins| {
        task_mut(ins).consumer = Some(Node {
            node_id: 5,
            anonymous: true,
        });
    });
    reject(&|ins| {
        task_mut(ins).consumer = Some(Node {
            node_id: 0,
            anonymous: false,
        });
    });
    reject(&|ins| task_mut(ins).producer = None);
    reject(&|ins| task_mut(ins).producer = node(node_id));
    reject(&|ins| {
        task_mut(ins).producer = Some(Node {
            node_id: 0,
            anonymous: false,
        });
    });
    reject(&|ins| task_mut(ins).ancestry = vec!["x".to_owned()]);
    // Store-level checks: unknown run, unknown named consumer.
    reject(&|ins| ins.run_id = run_id.wrapping_add(1));
    reject(&|ins| task_mut(ins).consumer = node(node_id.wrapping_add(1)));
    assert_eq!(state.task_counts().unwrap(), TaskCounts::default());

    // Valid ones: an error instead of a recordset, an anonymous consumer, an offline node.
    let mut with_error = valid.clone();
    task_mut(&mut with_error).recordset = None;
    task_mut(&mut with_error).error = Some(Error {
        code: 1,
        reason: "r".to_owned(),
    });
    let error_id = state.store_one(with_error).unwrap().unwrap();
    assert!(state
        .store_one(task_ins(run_id, 0, T0, 60.0))
        .unwrap()
        .is_some());
    clock.advance(31.0);
    assert!(state.online_nodes(run_id).unwrap().is_empty());
    let ok = state
        .store_one(task_ins(run_id, node_id, T0 + 31.0, 60.0))
        .unwrap();
    assert!(ok.is_some());
    assert_eq!(state.task_counts().unwrap().task_ins, 3);
    // The error survives storage (the reference's SQLite store dropped it).
    let pulled = state.task_ins_for_node(Some(node_id), 10).unwrap();
    let first = pulled.iter().find(|ins| ins.task_id == error_id).unwrap();
    let task = first.task.as_ref().unwrap();
    assert_eq!(task.error.as_ref().map(|error| error.code), Some(1));
    assert_eq!(task.recordset, None);
    assert_eq!(task.pushed_at, T0);
    assert!(task.ancestry.is_empty());
}

fn story_task_ins_batch(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let node_id = state.create_node(30.0, None).unwrap();
    let valid = task_ins(run_id, node_id, T0, 60.0);
    let rejected = |list: Vec<TaskIns>| match state.store_task_ins(run_id, list) {
        Err(PushTaskInsError::Rejected(reason)) => reason,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(rejected(Vec::new()), TaskInsRejection::Empty);
    // One bad TaskIns refuses the whole batch, with the reasons, and stores nothing.
    let mut expired = valid.clone();
    task_mut(&mut expired).created_at = T0 - 60.0;
    task_mut(&mut expired).task_type = String::new();
    assert_eq!(
        rejected(vec![valid.clone(), expired]).to_string(),
        "task has already expired, `task_type` must not be empty"
    );
    let mut other_run = valid.clone();
    other_run.run_id = run_id.wrapping_add(1);
    assert_eq!(
        rejected(vec![valid.clone(), other_run]),
        TaskInsRejection::MismatchedRunId
    );
    assert_eq!(state.task_counts().unwrap(), TaskCounts::default());

    // An accepted batch stores in order; an unknown consumer is dropped on its own.
    let unknown = node_id.wrapping_add(1);
    let outcomes = state
        .store_task_ins(
            run_id,
            vec![valid.clone(), task_ins(run_id, unknown, T0, 60.0), valid],
        )
        .unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].as_ref().is_ok_and(|id| uuid_like_ok(id)));
    assert_eq!(
        outcomes[1],
        Err(TaskInsDropped::NotFound {
            run_id,
            node_id: unknown
        })
    );
    assert!(outcomes[2].is_ok());
    // Stamped with the store's clock.
    clock.advance(1.0);
    let pulled = state.task_ins_for_node(Some(node_id), 10).unwrap();
    assert_eq!(pulled.len(), 2);
    assert!(pulled
        .iter()
        .all(|ins| ins.task.as_ref().is_some_and(|task| task.pushed_at == T0)));
}

fn story_task_ins_delivery(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let b = state.create_node(30.0, None).unwrap();
    let a1 = state
        .store_one(task_ins(run_id, a, T0, 100.0))
        .unwrap()
        .unwrap();
    clock.advance(1.0);
    let _short = state
        .store_one(task_ins(run_id, a, T0, 10.0))
        .unwrap()
        .unwrap();
    let a3 = state
        .store_one(task_ins(run_id, a, T0, 100.0))
        .unwrap()
        .unwrap();
    let b1 = state
        .store_one(task_ins(run_id, b, T0, 100.0))
        .unwrap()
        .unwrap();
    let anon = state
        .store_one(task_ins(run_id, 0, T0, 100.0))
        .unwrap()
        .unwrap();
    let ids = |tasks: Vec<TaskIns>| tasks.into_iter().map(|t| t.task_id).collect::<Vec<_>>();

    // Oldest first, up to the limit; each is delivered once.
    assert_eq!(ids(state.task_ins_for_node(Some(a), 1).unwrap()), vec![a1]);
    // An expired TaskIns is skipped.
    clock.set(T0 + 10.0);
    assert_eq!(
        ids(state.task_ins_for_node(Some(a), 5).unwrap()),
        vec![a3.clone()]
    );
    assert!(state.task_ins_for_node(Some(a), 5).unwrap().is_empty());
    assert_eq!(ids(state.task_ins_for_node(None, 5).unwrap()), vec![anon]);
    assert!(state.task_ins_for_node(None, 5).unwrap().is_empty());
    assert!(state.task_ins_for_node(Some(0), 5).unwrap().is_empty());
    assert!(state.task_ins_for_node(Some(b), 0).unwrap().is_empty());
    let got = state.task_ins_for_node(Some(b), 5).unwrap();
    assert_eq!(got[0].task_id, b1);
    assert_eq!(
        got[0].task.as_ref().unwrap().delivered_at,
        isoformat(T0 + 10.0)
    );
    // Delivered and expired TaskIns stay stored until their results are pulled.
    assert_eq!(state.task_counts().unwrap().task_ins, 5);
}

fn story_task_res_validation(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let b = state.create_node(30.0, None).unwrap();
    let ins_id = state
        .store_one(task_ins(run_id, a, T0, 100.0))
        .unwrap()
        .unwrap();
    clock.advance(10.0);
    let now = T0 + 10.0;
    let valid = task_res(run_id, a, &ins_id, now, 90.0);
    let reject = |mutate: &dyn Fn(&mut TaskRes)| {
        let mut res = valid.clone();
        mutate(&mut res);
        assert_eq!(state.store_task_res(res.clone()).unwrap(), None, "{res:?}");
    };
    // §6.1 validation.
    reject(&|res| res.task_id = "x".to_owned());
    reject(&|res| res.task = None);
    reject(&|res| res_task_mut(res).ancestry.clear());
    reject(&|res| res_task_mut(res).producer = None);
    reject(&|res| {
        res_task_mut(res).producer = Some(Node {
            node_id: a,
            anonymous: true,
        });
    });
    reject(&|res| {
        res_task_mut(res).producer = Some(Node {
            node_id: 0,
            anonymous: false,
        });
    });
    reject(&|res| res_task_mut(res).ttl = 0.0);
    reject(&|res| res_task_mut(res).task_type = String::new());
    reject(&|res| res_task_mut(res).consumer = None);
    // Step 3: unknown TaskIns, or a producer other than the TaskIns's consumer.
    reject(&|res| res_task_mut(res).ancestry = vec![uuid_like(7)]);
    reject(&|res| res_task_mut(res).producer = node(b));
    // Step 5: the reply may outlive the instruction by at most 0.1 s.
    reject(&|res| res_task_mut(res).ttl = 90.2);
    // Step 6: the run must exist.
    reject(&|res| res.run_id = run_id.wrapping_add(1));
    // Step 2: a malformed ancestry id is an error, but only after validation passed.
    let mut malformed = valid.clone();
    res_task_mut(&mut malformed).ancestry = vec!["not-a-uuid".to_owned()];
    let err = state.store_task_res(malformed.clone()).unwrap_err();
    assert!(matches!(err, StateError::InvalidUuid(ref text) if text == "not-a-uuid"));
    assert_eq!(err.to_string(), "badly formed hexadecimal UUID string");
    res_task_mut(&mut malformed).ttl = 0.0;
    assert_eq!(state.store_task_res(malformed).unwrap(), None);
    assert_eq!(state.task_counts().unwrap().task_res, 0);

    // Within tolerance, and with the TaskIns id in another accepted UUID spelling.
    let mut ok = valid.clone();
    res_task_mut(&mut ok).ttl = 90.05;
    res_task_mut(&mut ok).ancestry = vec![ins_id.to_uppercase().replace('-', "")];
    assert!(state.store_task_res(ok).unwrap().is_some());

    // Step 4: an expired instruction accepts no reply.
    clock.set(T0 + 100.0);
    let late = task_res(run_id, a, &ins_id, T0 + 100.0, 1.0);
    assert_eq!(state.store_task_res(late).unwrap(), None);
}

fn story_task_res_anonymous(state: &dyn LinkState, _clock: &TestClock) {
    // A TaskIns for an anonymous consumer accepts a reply from any named node.
    let run_id = running_run(state);
    let ins_id = state
        .store_one(task_ins(run_id, 0, T0, 100.0))
        .unwrap()
        .unwrap();
    let res = task_res(run_id, 42, &ins_id, T0, 100.0);
    assert!(state.store_task_res(res).unwrap().is_some());
}

fn story_task_res_replaces_duplicate(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let ins_id = state
        .store_one(task_ins(run_id, a, T0, 100.0))
        .unwrap()
        .unwrap();
    clock.advance(1.0);
    let first = state
        .store_task_res(task_res(run_id, a, &ins_id, T0 + 1.0, 99.0))
        .unwrap()
        .unwrap();
    let second = state
        .store_task_res(task_res(run_id, a, &ins_id, T0 + 1.0, 99.0))
        .unwrap()
        .unwrap();
    assert_ne!(first, second);
    assert_eq!(state.task_counts().unwrap().task_res, 1);
    let replies = state.task_res(&[ins_id]).unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].task_id, second);
    assert_eq!(
        replies[0].task.as_ref().unwrap().delivered_at,
        isoformat(T0 + 1.0)
    );
    assert_eq!(state.task_counts().unwrap(), TaskCounts::default());
}

fn story_task_res_synthetic_replies(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let mut ins = task_ins(run_id, a, T0, 100.0);
    ins.group_id = "round-3".to_owned();
    let waiting = state.store_one(ins.clone()).unwrap().unwrap();
    let expiring_reply = state.store_one(ins.clone()).unwrap().unwrap();
    let mut short = ins.clone();
    task_mut(&mut short).ttl = 5.0;
    let short_id = state.store_one(short).unwrap().unwrap();
    clock.advance(1.0);
    state
        .store_task_res(task_res(run_id, a, &expiring_reply, T0 + 1.0, 2.0))
        .unwrap()
        .unwrap();

    clock.set(T0 + 10.0);
    let unknown = uuid_like(9);
    let replies = state
        .task_res(&[
            waiting.clone(),
            unknown.clone(),
            expiring_reply.clone(),
            short_id.clone(),
            unknown.clone(),
        ])
        .unwrap();
    assert_eq!(replies.len(), 3, "{replies:?}");

    // Unknown TaskIns: "message unavailable", run id 0.
    let missing = &replies[0];
    assert_eq!(missing.run_id, 0);
    assert_eq!(missing.group_id, "");
    let task = missing.task.as_ref().unwrap();
    assert_eq!(task.ancestry, vec![unknown.clone()]);
    assert_eq!((task.created_at, task.ttl), (T0 + 10.0, 0.0));
    assert_eq!(task.task_type, "");
    let named_zero = Node {
        node_id: 0,
        anonymous: false,
    };
    assert_eq!(
        (task.producer, task.consumer),
        (Some(named_zero), Some(named_zero))
    );
    let error = task.error.as_ref().unwrap();
    assert_eq!(
        (error.code, &*error.reason),
        (MESSAGE_UNAVAILABLE, MESSAGE_UNAVAILABLE_REASON)
    );
    assert!(uuid_like_ok(&missing.task_id));

    // Expired reply: "reply message unavailable", carrying the TaskIns's fields.
    let expired = &replies[1];
    assert_eq!((expired.run_id, &*expired.group_id), (run_id, "round-3"));
    let task = expired.task.as_ref().unwrap();
    assert_eq!(task.ancestry, vec![expiring_reply.clone()]);
    assert_eq!(task.task_type, "train");
    assert_eq!(task.ttl, 90.0);
    assert_eq!(task.producer.map(|node| node.node_id), Some(a));
    let error = task.error.as_ref().unwrap();
    assert_eq!(
        (error.code, &*error.reason),
        (REPLY_MESSAGE_UNAVAILABLE, REPLY_MESSAGE_UNAVAILABLE_REASON)
    );

    // Expired TaskIns: "message unavailable", and it is deleted.
    assert_eq!(replies[2].run_id, 0);
    assert_eq!(replies[2].task.as_ref().unwrap().ancestry, vec![short_id]);

    // Only the TaskIns still waiting for its reply remains.
    assert_eq!(
        state.task_counts().unwrap(),
        TaskCounts {
            task_ins: 1,
            task_res: 0
        }
    );
    assert!(state
        .task_res(std::slice::from_ref(&waiting))
        .unwrap()
        .is_empty());

    // A malformed id fails the whole call and deletes nothing.
    let err = state
        .task_res(&[waiting.clone(), "zzz".to_owned()])
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidUuid(_)));
    assert_eq!(state.task_counts().unwrap().task_ins, 1);
}

fn story_error_reply_round_trip(state: &dyn LinkState, _clock: &TestClock) {
    let run_id = running_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let ins_id = state
        .store_one(task_ins(run_id, a, T0, 100.0))
        .unwrap()
        .unwrap();
    let mut res = task_res(run_id, a, &ins_id, T0, 100.0);
    res_task_mut(&mut res).recordset = None;
    res_task_mut(&mut res).error = Some(Error {
        code: 2,
        reason: "client app failed".to_owned(),
    });
    let res_id = state.store_task_res(res.clone()).unwrap().unwrap();
    let replies = state.task_res(&[ins_id]).unwrap();
    let mut expected = res;
    expected.task_id = res_id;
    res_task_mut(&mut expected).pushed_at = T0;
    res_task_mut(&mut expected).delivered_at = isoformat(T0);
    assert_eq!(replies, vec![expected]);
}

fn story_delete_tasks_of_run(state: &dyn LinkState, _clock: &TestClock) {
    let keep = running_run(state);
    let stop = running_run(state);
    let a = state.create_node(30.0, None).unwrap();
    let kept = state
        .store_one(task_ins(keep, a, T0, 100.0))
        .unwrap()
        .unwrap();
    state
        .store_task_res(task_res(keep, a, &kept, T0, 100.0))
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        let id = state
            .store_one(task_ins(stop, a, T0, 100.0))
            .unwrap()
            .unwrap();
        state
            .store_task_res(task_res(stop, a, &id, T0, 100.0))
            .unwrap()
            .unwrap();
    }
    state
        .store_one(task_ins(stop, 0, T0, 100.0))
        .unwrap()
        .unwrap();
    assert_eq!(
        state.task_counts().unwrap(),
        TaskCounts {
            task_ins: 5,
            task_res: 4
        }
    );
    state.delete_tasks_of_run(stop).unwrap();
    assert_eq!(
        state.task_counts().unwrap(),
        TaskCounts {
            task_ins: 1,
            task_res: 1
        }
    );
    state.delete_tasks_of_run(12345).unwrap();
    assert_eq!(state.task_res(&[kept]).unwrap().len(), 1);
}

fn story_node_key_binding(state: &dyn LinkState, clock: &TestClock) {
    let run_id = new_run(state);
    let key = b"-----BEGIN PUBLIC KEY-----\nA\n-----END PUBLIC KEY-----\n".to_vec();
    assert_eq!(state.node_id_for_public_key(&key).unwrap(), None);
    let first = state.create_node(30.0, Some(&key)).unwrap();
    assert_eq!(state.node_id_for_public_key(&key).unwrap(), Some(first));
    assert!(matches!(
        state.create_node(30.0, Some(&key)),
        Err(StateError::PublicKeyInUse(id)) if id == first
    ));
    // Re-registration with a live binding: the auth layer pings the existing id.
    clock.advance(20.0);
    assert!(state.acknowledge_ping(first, 30.0).unwrap());
    clock.advance(20.0);
    assert_eq!(state.online_nodes(run_id).unwrap(), vec![first]);

    // DeleteNode removes the binding too (no stale id, AUTH.md §7.1).
    state.delete_node(first).unwrap();
    assert_eq!(state.node_id_for_public_key(&key).unwrap(), None);
    let second = state.create_node(30.0, Some(&key)).unwrap();
    assert_ne!(second, first);
    assert_eq!(state.node_id_for_public_key(&key).unwrap(), Some(second));
    assert!(state.acknowledge_ping(second, 30.0).unwrap());
    assert!(!state.acknowledge_ping(first, 30.0).unwrap());
    assert_eq!(state.online_nodes(run_id).unwrap(), vec![second]);
    state.delete_node(second).unwrap();
    assert!(matches!(
        state.delete_node(second),
        Err(StateError::NodeNotFound(_))
    ));
}

fn story_log_epsilon(state: &dyn LinkState, clock: &TestClock) {
    let run_id = new_run(state);
    state.add_serverapp_log(run_id, "x").unwrap();
    // Within 1e-6 of the chunk's timestamp counts as already seen.
    assert_eq!(state.serverapp_logs_after(run_id, T0 - 5e-7).unwrap().0, "");
    assert_eq!(
        state.serverapp_logs_after(run_id, T0 - 1e-5).unwrap().0,
        "x"
    );
    clock.advance(0.25);
    state.add_serverapp_log(run_id, "y\n").unwrap();
    state.add_serverapp_log(run_id, "z").unwrap();
    assert_eq!(
        state.serverapp_logs_after(run_id, T0).unwrap(),
        ("y\nz".to_owned(), T0 + 0.25)
    );
    assert!(matches!(
        state.serverapp_logs_after(run_id.wrapping_add(1), 0.0),
        Err(StateError::RunNotFound(_))
    ));
}

// ----- more helpers -----

fn task_mut(ins: &mut TaskIns) -> &mut Task {
    ins.task.get_or_insert_with(Task::default)
}

fn res_task_mut(res: &mut TaskRes) -> &mut Task {
    res.task.get_or_insert_with(Task::default)
}

/// A syntactically valid task id that no store generated.
fn uuid_like(n: u8) -> String {
    format!("00000000-0000-4000-8000-0000000000{n:02x}")
}

/// Whether `text` is a canonical lowercase hyphenated UUID.
fn uuid_like_ok(text: &str) -> bool {
    flwr_state::parse_task_id(text).is_ok_and(|id| id.hyphenated().to_string() == text)
}

fn scalar_double(value: f64) -> Scalar {
    Scalar {
        scalar: Some(scalar::Scalar::Double(value)),
    }
}

fn scalar_string(value: &str) -> Scalar {
    Scalar {
        scalar: Some(scalar::Scalar::String(value.to_owned())),
    }
}

// ----- backends -----

/// A story run against one store.
type Story = fn(&dyn LinkState, &TestClock);

fn with_memory(story: Story) {
    let clock = Arc::new(TestClock::new(T0));
    let state = InMemoryLinkState::new(clock.clone());
    story(&state, &clock);
}

fn with_sqlite_file(story: Story) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock::new(T0));
    let state = SqliteLinkState::open(dir.path().join("state.db"), clock.clone()).unwrap();
    story(&state, &clock);
}

/// `:memory:` must behave like a file: one shared database for every call.
fn with_sqlite_memory_path(story: Story) {
    let clock = Arc::new(TestClock::new(T0));
    let state = SqliteLinkState::open(":memory:", clock.clone()).unwrap();
    story(&state, &clock);
}

/// A fresh database on the test binary's shared PostgreSQL cluster. Fails at once, with the
/// reason, when PostgreSQL is not installed.
fn postgres_database() -> String {
    let cluster = flwr_testkit::TempPostgres::shared().unwrap_or_else(|err| panic!("{err}"));
    cluster
        .fresh_database()
        .unwrap_or_else(|err| panic!("{err}"))
}

fn with_postgres(story: Story) {
    let clock = Arc::new(TestClock::new(T0));
    let state = PostgresLinkState::connect(&postgres_database(), clock.clone()).unwrap();
    story(&state, &clock);
}

/// Runs every listed story against every store.
macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        mod in_memory {
            $(#[test] fn $story() { super::with_memory(super::$story) })*
        }
        mod sqlite_file {
            $(#[test] fn $story() { super::with_sqlite_file(super::$story) })*
        }
        mod sqlite_memory_path {
            $(#[test] fn $story() { super::with_sqlite_memory_path(super::$story) })*
        }
        mod postgres {
            $(#[test] fn $story() { super::with_postgres(super::$story) })*
        }
    };
}

conformance!(
    story_run_lifecycle,
    story_invalid_transitions,
    story_invalid_sub_status_sticks,
    story_run_listing,
    story_guards,
    story_concurrent_start,
    story_nodes_and_liveness,
    story_node_online,
    story_many_nodes,
    story_node_key_binding,
    story_task_roundtrip,
    story_task_ins_validation,
    story_task_ins_batch,
    story_task_ins_delivery,
    story_task_res_validation,
    story_task_res_anonymous,
    story_task_res_replaces_duplicate,
    story_task_res_synthetic_replies,
    story_error_reply_round_trip,
    story_delete_tasks_of_run,
    story_replies_pending,
    story_logs,
    story_log_epsilon,
    story_context,
    story_context_at_creation,
);

#[test]
fn only_sqlite_blocks() {
    let clock = Arc::new(TestClock::new(T0));
    assert!(!InMemoryLinkState::new(clock.clone()).blocks());
    assert!(SqliteLinkState::open_in_memory(clock).unwrap().blocks());
}

// ----- in memory only -----

/// A model sent to every node is stored once, handed out whole to each, and released with the
/// last TaskIns that carries it.
#[test]
fn in_memory_identical_task_ins_content_is_stored_once() {
    let clock = Arc::new(TestClock::new(T0));
    let state = InMemoryLinkState::new(clock.clone());
    let run_id = running_run(&state);
    let nodes: Vec<u64> = (0..4)
        .map(|_| state.create_node(30.0, None).unwrap())
        .collect();
    let model = RecordSet {
        parameters: HashMap::from([(
            "model".to_owned(),
            flwr_proto::ParametersRecord {
                data_keys: vec!["w".to_owned()],
                data_values: vec![flwr_proto::Array {
                    dtype: "float32".to_owned(),
                    shape: vec![4096],
                    stype: "numpy.ndarray".to_owned(),
                    data: (0..16_384_u32).map(|i| (i % 251) as u8).collect(),
                }],
            },
        )]),
        ..RecordSet::default()
    };
    let with_model = |node_id: u64| {
        let mut ins = task_ins(run_id, node_id, T0, 3600.0);
        task_mut(&mut ins).recordset = Some(model.clone());
        ins
    };
    let ids: Vec<String> = nodes
        .iter()
        .map(|&node_id| state.store_one(with_model(node_id)).unwrap().unwrap())
        .collect();
    assert_eq!(state.distinct_record_sets(), 1, "four TaskIns, one model");
    let other = state
        .store_one(task_ins(run_id, nodes[0], T0, 3600.0))
        .unwrap()
        .unwrap();
    assert_eq!(
        state.distinct_record_sets(),
        2,
        "different content is kept apart"
    );

    for &node_id in &nodes {
        let pulled = state.task_ins_for_node(Some(node_id), 1).unwrap();
        assert_eq!(pulled.len(), 1);
        assert_eq!(
            pulled[0].task.as_ref().unwrap().recordset.as_ref(),
            Some(&model)
        );
    }
    clock.advance(1.0);
    for (id, &node_id) in ids.iter().zip(&nodes).take(3) {
        state
            .store_task_res(task_res(run_id, node_id, id, T0 + 1.0, 3599.0))
            .unwrap()
            .unwrap();
        assert_eq!(state.task_res(std::slice::from_ref(id)).unwrap().len(), 1);
    }
    assert_eq!(
        state.distinct_record_sets(),
        2,
        "one TaskIns still holds the model"
    );
    state.delete_tasks_of_run(run_id).unwrap();
    assert_eq!(state.distinct_record_sets(), 0);
    let _ = other;
}

// ----- SQLite only -----

#[test]
fn sqlite_restart_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let clock = Arc::new(TestClock::new(T0));
    let key = b"node key".to_vec();
    let (finished, pending, node_id, ins_id, runs_before) = {
        let state = SqliteLinkState::open(&path, clock.clone()).unwrap();
        let finished = running_run(&state);
        let mut failed = status(FINISHED, FAILED);
        failed.details = "boom".to_owned();
        assert!(state.update_run_status(finished, failed).unwrap());
        let context = Context {
            run_id: finished,
            node_id: 0,
            ..Context::default()
        };
        state.set_serverapp_context(finished, context).unwrap();
        state.add_serverapp_log(finished, "hello").unwrap();
        let pending = new_run(&state);
        let node_id = state.create_node(30.0, Some(&key)).unwrap();
        let live = running_run(&state);
        let ins_id = state
            .store_one(task_ins(live, node_id, T0, 100.0))
            .unwrap()
            .unwrap();
        (finished, pending, node_id, ins_id, state.runs().unwrap())
    };

    clock.advance(5.0);
    let state = SqliteLinkState::open(&path, clock.clone()).unwrap();
    assert_eq!(state.runs().unwrap(), runs_before);
    let run = state.run(finished).unwrap().unwrap();
    assert_eq!(run.status.as_ref().map(|s| &*s.details), Some("boom"));
    assert_eq!(run.finished_at, isoformat(T0));
    assert_eq!(
        state.serverapp_context(finished).unwrap().map(|c| c.run_id),
        Some(finished)
    );
    assert_eq!(
        state.serverapp_logs_after(finished, 0.0).unwrap(),
        ("hello".to_owned(), T0)
    );
    assert_eq!(state.pending_run_id().unwrap(), Some(pending));
    assert_eq!(state.node_id_for_public_key(&key).unwrap(), Some(node_id));
    assert_eq!(state.online_nodes(pending).unwrap(), vec![node_id]);
    let pulled = state.task_ins_for_node(Some(node_id), 5).unwrap();
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].task_id, ins_id);
}

#[test]
fn sqlite_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
    }
    let clock = Arc::new(TestClock::new(T0));
    let err = SqliteLinkState::open(&path, clock).unwrap_err();
    assert!(matches!(err, StateError::UnsupportedSchema(99)));
}

#[test]
fn sqlite_separate_memory_databases_are_independent() {
    let clock = Arc::new(TestClock::new(T0));
    let one = SqliteLinkState::open_in_memory(clock.clone()).unwrap();
    let two = SqliteLinkState::open(":memory:", clock).unwrap();
    let run_id = new_run(&one);
    assert!(one.run(run_id).unwrap().is_some());
    assert!(two.runs().unwrap().is_empty());
}

// ----- PostgreSQL only: two store instances on one database are two SuperLink replicas -----

/// How long a PostgreSQL-only test waits for something another instance caused.
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Two instances (replicas) on one fresh database, with one clock.
fn two_replicas() -> (PostgresLinkState, PostgresLinkState, Arc<TestClock>) {
    let url = postgres_database();
    let clock = Arc::new(TestClock::new(T0));
    let one = PostgresLinkState::connect(&url, clock.clone()).unwrap();
    let two = PostgresLinkState::connect(&url, clock.clone()).unwrap();
    assert_ne!(one.replica_id(), two.replica_id());
    (one, two, clock)
}

/// Runs `statements` on the database at `url` with a plain connection.
fn run_sql(url: &str, statements: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute(statements).await.unwrap();
    });
}

#[test]
fn postgres_is_shared_and_blocks() {
    let (one, _two, _clock) = two_replicas();
    assert!(one.shared());
    assert!(one.blocks());
}

#[test]
fn postgres_delivers_each_task_ins_exactly_once_across_replicas() {
    let (one, two, _clock) = two_replicas();
    let run_id = running_run(&one);
    let node_id = one.create_node(30.0, None).unwrap();
    let stored: Vec<String> = (0..200)
        .map(|_| {
            let store: &dyn LinkState = if rand_bit() { &one } else { &two };
            store
                .store_one(task_ins(run_id, node_id, T0, 3600.0))
                .unwrap()
                .unwrap()
        })
        .collect();
    let pulled: Vec<String> = std::thread::scope(|scope| {
        let pullers: Vec<_> = [&one, &two, &one, &two]
            .into_iter()
            .map(|state| {
                scope.spawn(move || {
                    let mut got = Vec::new();
                    // Bounded: 200 TaskIns in batches of at least one.
                    for _ in 0..250 {
                        let batch = state.task_ins_for_node(Some(node_id), 7).unwrap();
                        if batch.is_empty() {
                            break;
                        }
                        got.extend(batch.into_iter().map(|ins| ins.task_id));
                    }
                    got
                })
            })
            .collect();
        pullers
            .into_iter()
            .flat_map(|puller| puller.join().unwrap())
            .collect()
    });
    let distinct: std::collections::HashSet<&String> = pulled.iter().collect();
    assert_eq!(
        distinct.len(),
        pulled.len(),
        "a TaskIns was delivered twice"
    );
    let mut pulled = pulled;
    let mut stored = stored;
    pulled.sort();
    stored.sort();
    assert_eq!(pulled, stored, "every TaskIns is delivered");
    assert!(one.task_ins_for_node(Some(node_id), 10).unwrap().is_empty());
}

/// A cheap coin flip, so stores alternate irregularly.
fn rand_bit() -> bool {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    hasher.finish() & 1 == 1
}

#[test]
fn postgres_pending_to_starting_is_won_once_across_replicas() {
    let (one, two, _clock) = two_replicas();
    for _ in 0..5 {
        let run_id = new_run(&one);
        let wins = std::thread::scope(|scope| {
            let racers: Vec<_> = [&one, &two, &one, &two]
                .into_iter()
                .map(|state| {
                    scope.spawn(move || {
                        state
                            .update_run_status(run_id, status(STARTING, ""))
                            .unwrap()
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .filter(|won| *won)
                .count()
        });
        assert_eq!(wins, 1);
    }
}

#[test]
fn postgres_a_key_registers_once_across_replicas() {
    let (one, two, _clock) = two_replicas();
    for i in 0..5 {
        let key = format!("racing key {i}").into_bytes();
        let outcomes: Vec<Result<u64, StateError>> = std::thread::scope(|scope| {
            let racers: Vec<_> = [&one, &two, &one, &two]
                .into_iter()
                .map(|state| scope.spawn(|| state.create_node(30.0, Some(&key))))
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .collect()
        });
        let winners: Vec<u64> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .copied()
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        for outcome in &outcomes {
            if let Err(err) = outcome {
                assert!(
                    matches!(err, StateError::PublicKeyInUse(id) if *id == winners[0]),
                    "{err:?}"
                );
            }
        }
        assert_eq!(two.node_id_for_public_key(&key).unwrap(), Some(winners[0]));
    }
}

#[test]
fn postgres_launch_claims_are_exclusive_and_expire() {
    let (one, two, clock) = two_replicas();
    let lease = std::time::Duration::from_secs(30);
    let run_id = new_run(&one);
    assert_eq!(one.claim_pending_run(lease).unwrap(), Some(run_id));
    // Claimed by one: the other neither claims it nor reports it pending.
    assert_eq!(two.claim_pending_run(lease).unwrap(), None);
    assert_eq!(two.pending_run_id().unwrap(), None);
    assert_eq!(one.pending_run_id().unwrap(), Some(run_id));
    // Claiming again extends one's own claim.
    assert_eq!(one.claim_pending_run(lease).unwrap(), Some(run_id));

    // A renewed lease holds past the first expiry.
    clock.advance(20.0);
    one.renew_leases(&[run_id], lease).unwrap();
    clock.advance(20.0);
    assert_eq!(two.claim_pending_run(lease).unwrap(), None);
    // Expired: the other replica may claim it, and then holds it.
    clock.advance(11.0);
    assert_eq!(two.claim_pending_run(lease).unwrap(), Some(run_id));
    assert_eq!(one.claim_pending_run(lease).unwrap(), None);
    assert_eq!(one.pending_run_id().unwrap(), None);
    // A lease it lost is not renewed by its old holder.
    one.renew_leases(&[run_id], lease).unwrap();
    clock.advance(31.0);
    assert_eq!(one.claim_pending_run(lease).unwrap(), Some(run_id));

    // Two replicas racing for fresh runs never get the same one.
    let runs: Vec<u64> = (0..6).map(|_| new_run(&two)).collect();
    let claimed: Vec<u64> = std::thread::scope(|scope| {
        let claimers: Vec<_> = [&one, &two]
            .into_iter()
            .map(|state| {
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..10 {
                        if let Some(run) = state.claim_pending_run(lease).unwrap() {
                            if mine.contains(&run) {
                                break;
                            }
                            mine.push(run);
                            // Started: no longer pending, so the next claim takes another.
                            assert!(state.update_run_status(run, status(STARTING, "")).unwrap());
                        }
                    }
                    mine
                })
            })
            .collect();
        claimers
            .into_iter()
            .flat_map(|claimer| claimer.join().unwrap())
            .collect()
    });
    let mut expected = runs;
    expected.push(run_id);
    let mut claimed_sorted = claimed.clone();
    claimed_sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        claimed_sorted, expected,
        "each run claimed exactly once: {claimed:?}"
    );
}

#[test]
fn postgres_take_over_resets_runs_whose_launcher_died() {
    let (one, two, clock) = two_replicas();
    let lease = std::time::Duration::from_secs(10);
    let node_id = one.create_node(3600.0, None).unwrap();

    // `orphan`: claimed by one, running, with a task and a reply; one then stops renewing.
    let orphan = new_run(&one);
    assert_eq!(one.claim_pending_run(lease).unwrap(), Some(orphan));
    clock.advance(1.0);
    assert!(one.update_run_status(orphan, status(STARTING, "")).unwrap());
    assert!(one.update_run_status(orphan, status(RUNNING, "")).unwrap());
    let ins_id = one
        .store_one(task_ins(orphan, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    assert_eq!(one.task_ins_for_node(Some(node_id), 5).unwrap().len(), 1);
    one.store_task_res(task_res(orphan, node_id, &ins_id, T0 + 1.0, 3599.0))
        .unwrap()
        .unwrap();
    one.store_one(task_ins(orphan, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();

    // `live`: claimed by one, running, lease renewed.
    let live = new_run(&one);
    assert_eq!(one.claim_pending_run(lease).unwrap(), Some(live));
    assert!(one.update_run_status(live, status(STARTING, "")).unwrap());
    assert!(one.update_run_status(live, status(RUNNING, "")).unwrap());
    one.store_one(task_ins(live, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    // `unleased`: running without ever being claimed (a single-process launcher's run).
    let unleased = running_run(&one);
    // `done`: claimed, then finished.
    let done = new_run(&one);
    assert_eq!(one.claim_pending_run(lease).unwrap(), Some(done));
    assert!(one
        .update_run_status(done, status(FINISHED, STOPPED))
        .unwrap());

    assert_eq!(two.take_over_orphans(lease).unwrap(), Vec::<u64>::new());
    clock.advance(9.0);
    one.renew_leases(&[live], lease).unwrap();
    clock.advance(2.0);
    assert_eq!(two.take_over_orphans(lease).unwrap(), vec![orphan]);
    // Taken once: a second look (or another replica) finds nothing more.
    assert_eq!(one.take_over_orphans(lease).unwrap(), Vec::<u64>::new());
    assert_eq!(two.take_over_orphans(lease).unwrap(), Vec::<u64>::new());

    let run = two.run(orphan).unwrap().unwrap();
    assert_eq!(run.status, Some(status(PENDING, "")));
    assert_eq!(run.pending_at, isoformat(T0));
    assert_eq!((&*run.starting_at, &*run.running_at), ("", ""));
    assert_eq!(
        two.task_counts().unwrap(),
        TaskCounts {
            task_ins: 1,
            task_res: 0
        },
        "only the live run's TaskIns is left"
    );
    assert_eq!(
        two.task_res(std::slice::from_ref(&ins_id)).unwrap()[0]
            .task
            .as_ref()
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .code,
        MESSAGE_UNAVAILABLE
    );
    // The lease moved to two: it launches the run, one no longer sees it pending.
    assert_eq!(one.pending_run_id().unwrap(), None);
    assert_eq!(two.pending_run_id().unwrap(), Some(orphan));
    assert_eq!(one.claim_pending_run(lease).unwrap(), None);
    assert_eq!(two.claim_pending_run(lease).unwrap(), Some(orphan));
    for (run_id, want) in [(live, RUNNING), (unleased, RUNNING), (done, FINISHED)] {
        let run = one.run(run_id).unwrap().unwrap();
        assert_eq!(run.status.unwrap().status, want);
    }
}

/// Watches `state`; the changes it hears arrive on the returned channel.
fn watch_changes(state: &PostgresLinkState) -> std::sync::mpsc::Receiver<flwr_state::Change> {
    let (sender, changes) = std::sync::mpsc::channel();
    let sender = std::sync::Mutex::new(sender);
    state
        .watch(Arc::new(move |change| {
            let _ = sender
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(change);
        }))
        .unwrap();
    changes
}

/// Waits (bounded) until `want` arrives, skipping other changes.
fn expect_change(
    changes: &std::sync::mpsc::Receiver<flwr_state::Change>,
    want: flwr_state::Change,
) {
    let deadline = std::time::Instant::now() + REPLICA_WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match changes.recv_timeout(left) {
            Ok(change) if change == want => return,
            Ok(change) => seen.push(change),
            Err(_) => panic!("no {want:?} within {REPLICA_WAIT:?}; heard {seen:?}"),
        }
    }
}

#[test]
fn postgres_watch_hears_changes_made_through_another_replica() {
    let (one, two, _clock) = two_replicas();
    let changes = watch_changes(&one);
    let expect = |want| expect_change(&changes, want);
    use flwr_state::Change;

    let run_id = new_run(&two);
    expect(Change::RunPending);
    assert!(two.update_run_status(run_id, status(STARTING, "")).unwrap());
    expect(Change::Run(run_id));
    assert!(two.update_run_status(run_id, status(RUNNING, "")).unwrap());
    let node_id = two.create_node(30.0, None).unwrap();
    let ins_id = two
        .store_one(task_ins(run_id, node_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    expect(Change::NodeTasks(Some(node_id)));
    two.store_one(task_ins(run_id, 0, T0, 3600.0))
        .unwrap()
        .unwrap();
    expect(Change::NodeTasks(None));
    two.store_task_res(task_res(run_id, node_id, &ins_id, T0, 3600.0))
        .unwrap()
        .unwrap();
    expect(Change::Run(run_id));
    two.delete_tasks_of_run(run_id).unwrap();
    expect(Change::Run(run_id));
    two.delete_node(node_id).unwrap();
    expect(Change::NodeTasks(Some(node_id)));
    // A rejected write notifies nobody: nothing but the next change arrives.
    assert_eq!(
        two.store_one(task_ins(run_id, node_id, T0, 3600.0))
            .unwrap(),
        None
    );
    let other = new_run(&two);
    assert_eq!(
        changes.recv_timeout(REPLICA_WAIT).ok(),
        Some(Change::RunPending)
    );
    let _ = other;
}

#[test]
fn postgres_fabs_are_shared_by_replicas() {
    use flwr_state::FabStore;
    let (one, two, _clock) = two_replicas();
    let hash = "ab".repeat(32);
    assert_eq!(two.fab(&hash).unwrap(), None);
    one.put_fab(&hash, b"fab bytes").unwrap();
    assert_eq!(two.fab(&hash).unwrap().as_deref(), Some(&b"fab bytes"[..]));
    // Storing it again, from either replica, is harmless.
    two.put_fab(&hash, b"fab bytes").unwrap();
    one.put_fab(&hash, b"fab bytes").unwrap();
    assert_eq!(one.fab(&hash).unwrap().as_deref(), Some(&b"fab bytes"[..]));
}

#[test]
fn postgres_replicas_starting_together_migrate_once() {
    let url = postgres_database();
    let clock = Arc::new(TestClock::new(T0));
    let stores: Vec<PostgresLinkState> = std::thread::scope(|scope| {
        let starters: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| PostgresLinkState::connect(&url, clock.clone()).unwrap()))
            .collect();
        starters
            .into_iter()
            .map(|starter| starter.join().unwrap())
            .collect()
    });
    let run_id = new_run(&stores[0]);
    assert!(stores[3].run(run_id).unwrap().is_some());
}

#[test]
fn postgres_refuses_newer_schema() {
    let url = postgres_database();
    let clock = Arc::new(TestClock::new(T0));
    drop(PostgresLinkState::connect(&url, clock.clone()).unwrap());
    run_sql(&url, "UPDATE flwr_schema SET version = 99");
    let err = PostgresLinkState::connect(&url, clock).unwrap_err();
    assert!(matches!(err, StateError::UnsupportedSchema(99)), "{err:?}");
}

#[test]
fn postgres_wrong_password_is_reported_without_the_password() {
    let cluster = flwr_testkit::TempPostgres::shared().unwrap_or_else(|err| panic!("{err}"));
    let url = cluster.fresh_database().unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let wrong = "not-the-password-4711";
    let port = cluster.port();
    let bad = format!("postgresql://flwr:{wrong}@127.0.0.1:{port}/{database}");
    let err = PostgresLinkState::connect(&bad, Arc::new(TestClock::new(T0))).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StateError::Postgres(_)), "{err:?}");
    assert!(!text.contains(wrong), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}/{database}")),
        "{text}"
    );
    assert!(text.contains("password authentication failed"), "{text}");
    // Nothing listens on a fresh port: refused, named, bounded.
    let closed = flwr_testkit::free_port().unwrap();
    let bad = format!("postgresql://flwr:{wrong}@127.0.0.1:{closed}/{database}");
    let err = PostgresLinkState::connect(&bad, Arc::new(TestClock::new(T0))).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(wrong), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{closed}")), "{text}");
}

/// A URL without a password takes PGPASSWORD, as libpq does, so that operators can keep the
/// password off the command line. (The only test that sets it; URLs with a password ignore it.)
#[test]
fn postgres_url_without_password_takes_pgpassword() {
    let cluster = flwr_testkit::TempPostgres::shared().unwrap_or_else(|err| panic!("{err}"));
    let url = cluster.fresh_database().unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let password = url
        .split_once("://flwr:")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(password, _)| password.to_owned())
        .unwrap();
    let port = cluster.port();
    let bare = format!("postgresql://flwr@127.0.0.1:{port}/{database}");
    std::env::set_var("PGPASSWORD", &password);
    let connected = PostgresLinkState::connect(&bare, Arc::new(TestClock::new(T0)));
    std::env::remove_var("PGPASSWORD");
    let state = connected.unwrap_or_else(|err| panic!("{err}"));
    assert!(state.runs().unwrap().is_empty());
}

#[test]
fn postgres_store_drops_on_an_async_worker() {
    let (one, two, _clock) = two_replicas();
    one.watch(Arc::new(|_| {})).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        drop(one);
        drop(two);
    });
}

#[test]
fn postgres_watch_reconnects_after_losing_its_connection() {
    use flwr_state::Change;
    let url = postgres_database();
    let clock = Arc::new(TestClock::new(T0));
    let one = PostgresLinkState::connect(&url, clock.clone()).unwrap();
    let two = PostgresLinkState::connect(&url, clock).unwrap();
    let changes = watch_changes(&one);
    new_run(&two);
    expect_change(&changes, Change::RunPending);
    // An administrator (or a failover) ends the listening session.
    run_sql(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = 'LISTEN flwr_changes' \
           AND pid <> pg_backend_pid()",
    );
    // Back on a new connection, the watcher says that it may have missed a pending run...
    expect_change(&changes, Change::RunPending);
    // ... and hears changes again.
    let run_id = running_run(&two);
    expect_change(&changes, Change::Run(run_id));
}
