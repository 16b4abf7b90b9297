//! One conformance suite, run against every [`LinkState`] store: each `story_*` function
//! exercises one behaviour through the trait only.

use std::collections::HashMap;
use std::sync::Arc;

use flwr_proto::{ConfigsRecord, Context, Node, RecordSet, RunStatus, Task, TaskIns, TaskRes};
use flwr_state::lifecycle::{COMPLETED, FAILED, FINISHED, PENDING, RUNNING, STARTING, STOPPED};
use flwr_state::{isoformat, InMemoryLinkState, LinkState, ManualClock, StateError};

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

fn new_run(state: &dyn LinkState) -> u64 {
    state
        .create_run(
            "flwr/app",
            "1.0.0",
            "ab",
            HashMap::new(),
            ConfigsRecord::default(),
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

fn story_task_roundtrip(state: &dyn LinkState, clock: &TestClock) {
    let run_id = running_run(state);
    let node_id = state.create_node(30.0, None).unwrap();
    let ins_id = state
        .store_task_ins(task_ins(run_id, node_id, T0, 3600.0))
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

// ----- backends -----

fn with_memory(story: fn(&dyn LinkState, &TestClock)) {
    let clock = Arc::new(TestClock::new(T0));
    let state = InMemoryLinkState::new(clock.clone());
    story(&state, &clock);
}

/// Runs every listed story against every store.
macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        mod in_memory {
            $(#[test] fn $story() { super::with_memory(super::$story) })*
        }
    };
}

conformance!(
    story_run_lifecycle,
    story_invalid_transitions,
    story_nodes_and_liveness,
    story_task_roundtrip,
    story_logs,
    story_context,
);
