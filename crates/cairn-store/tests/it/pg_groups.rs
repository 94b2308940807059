//! Consumer groups on a database several instances share: one instance drives a group
//! at a time (advisory-lock leases), a takeover moves the epoch, and a write made under
//! an earlier epoch is refused, so a stale owner can never move the durable state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::groups::{ConsumerGroups, GroupLeases, GroupRoute, GroupSettings};
use cairn_store::postgres::{PgGroupLeases, PostgresStore, group_lock_key};
use cairn_store::testing::{self, TestDatabase};
use cairn_store::{ParkedEvent, SharedStore, StoreError};

use crate::postgres::{append_one, options, sql};

/// Ends the database session that holds the group's advisory lock, as a crash of its
/// instance (or a network cut the server noticed) would.
async fn end_lock_session(database: &TestDatabase, group: &str) {
    let key = group_lock_key(group) as u64;
    let (classid, objid) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
    let client = sql(&database.primary_url).await;
    let ended = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND classid = ($1::bigint)::oid AND objid = ($2::bigint)::oid",
            &[&classid, &objid],
        )
        .await
        .unwrap();
    assert_eq!(ended.len(), 1, "exactly one session holds the group's lock");
}

async fn stored_checkpoint(database: &TestDatabase, group: &str) -> i64 {
    sql(&database.primary_url)
        .await
        .query_one(
            "SELECT checkpoint FROM consumer_groups WHERE name = $1",
            &[&group],
        )
        .await
        .unwrap()
        .get(0)
}

fn parked(position: u64) -> ParkedEvent {
    ParkedEvent {
        position,
        deliveries: 5,
        reason: "test".into(),
        parked_at: 1,
        replaying: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_a_stale_epoch_is_refused() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let store = PostgresStore::connect(options(&database)).await.unwrap();
    use cairn_store::EventStore as _;
    store
        .save_group("jobs", &GroupSettings::default(), 0)
        .await
        .unwrap();
    let a = PgGroupLeases::connect(&options(&database), "http://a.invalid".into())
        .await
        .unwrap();
    let b = PgGroupLeases::connect(&options(&database), "http://b.invalid".into())
        .await
        .unwrap();

    let first = a
        .try_acquire("jobs")
        .await
        .unwrap()
        .expect("the lease is free");
    assert!(b.try_acquire("jobs").await.unwrap().is_none(), "a holds it");
    let owner = b.owner("jobs").await.unwrap().unwrap();
    assert_eq!(owner.url.as_deref(), Some("http://a.invalid"));
    assert_eq!(owner.epoch, first.epoch);
    a.save_checkpoint("jobs", first.epoch, 3).await.unwrap();
    a.park_events("jobs", first.epoch, vec![parked(2)])
        .await
        .unwrap();

    // a's lock session ends: a learns it (its session moves on) and b takes over.
    let mut a_session = a.session();
    let before = *a_session.borrow_and_update();
    end_lock_session(&database, "jobs").await;
    tokio::time::timeout(Duration::from_secs(5), a_session.changed())
        .await
        .expect("a notices its lost session within 5 s")
        .unwrap();
    assert_ne!(*a_session.borrow(), before);
    // The server frees the lock as its backend exits, a moment after a hears of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        if let Some(lease) = b.try_acquire("jobs").await.unwrap() {
            break lease;
        }
        assert!(Instant::now() < deadline, "the lock was never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(second.epoch > first.epoch, "{second:?} after {first:?}");
    assert_eq!(
        second.record.checkpoint, 3,
        "b starts from a's last checkpoint"
    );

    // Every write a still makes under its old epoch is refused and changes nothing.
    let moved = |result: Result<_, StoreError>| {
        assert_eq!(result.err(), Some(StoreError::GroupMoved("jobs".into())));
    };
    moved(a.save_checkpoint("jobs", first.epoch, 9).await);
    moved(a.park_events("jobs", first.epoch, vec![parked(4)]).await);
    moved(a.replay_parked("jobs", first.epoch, None).await.map(drop));
    moved(a.remove_parked("jobs", first.epoch, vec![2]).await);
    let changed = GroupSettings {
        max_deliveries: 9,
        ..GroupSettings::default()
    };
    moved(a.save_settings("jobs", first.epoch, &changed).await);
    let stored_settings = || async {
        let groups = store.load_groups().await.unwrap();
        groups
            .into_iter()
            .find(|group| group.name == "jobs")
            .unwrap()
            .settings
    };
    assert_eq!(stored_settings().await, GroupSettings::default());
    assert_eq!(stored_checkpoint(&database, "jobs").await, 3);
    let parked_now = store.list_parked("jobs", 0, 100).await.unwrap();
    assert_eq!(
        parked_now.iter().map(|p| p.position).collect::<Vec<_>>(),
        [2]
    );
    assert!(!parked_now[0].replaying);

    // The owner's writes go through.
    b.save_settings("jobs", second.epoch, &changed)
        .await
        .unwrap();
    assert_eq!(stored_settings().await, changed);
    b.save_checkpoint("jobs", second.epoch, 9).await.unwrap();
    assert_eq!(stored_checkpoint(&database, "jobs").await, 9);
    assert_eq!(
        b.replay_parked("jobs", second.epoch, None).await.unwrap(),
        [2]
    );
    b.remove_parked("jobs", second.epoch, vec![2])
        .await
        .unwrap();
    assert!(store.list_parked("jobs", 0, 100).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moves_to_another_instance_when_its_lock_session_ends() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let connect = |url: &'static str| {
        let database = database.clone();
        async move {
            let store: SharedStore =
                Arc::new(PostgresStore::connect(options(&database)).await.unwrap());
            let leases: Arc<dyn GroupLeases> =
                PgGroupLeases::connect(&options(&database), url.into())
                    .await
                    .unwrap();
            let groups = ConsumerGroups::shared(Arc::clone(&store), leases)
                .await
                .unwrap();
            (store, groups)
        }
    };
    let (store_a, a) = connect("http://a.invalid").await;
    let (_store_b, b) = connect("http://b.invalid").await;
    for index in 0..20 {
        append_one(store_a.as_ref(), &format!("job-{}", index % 4)).await;
    }
    // Created through a: a drives it, b knows where it is.
    a.put("jobs", GroupSettings::default()).await.unwrap();
    assert_eq!(a.route("jobs").await.unwrap(), GroupRoute::Here);
    assert_eq!(
        b.route("jobs").await.unwrap(),
        GroupRoute::Owner("http://a.invalid".into())
    );
    assert_eq!(
        b.claim("jobs", 1, Duration::ZERO).await.err(),
        Some(StoreError::GroupMoved("jobs".into())),
        "b does not deliver a's group"
    );
    assert_eq!(
        b.route("nobody").await.unwrap(),
        GroupRoute::Missing,
        "no such group"
    );
    let first = a.claim("jobs", 5, Duration::ZERO).await.unwrap();
    let claimed: Vec<u64> = first.iter().map(|d| d.event.position).collect();
    assert_eq!(claimed, [1, 2, 3, 4, 5]);
    a.ack("jobs", &[1, 2]).await.unwrap();

    let rest = a.claim("jobs", 100, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 15, "everything else is in flight at a");

    // A claim waits at a (polled first, so it waits before the session ends); a's
    // lock session ends; the claim ends at once, refused.
    let ended = Instant::now();
    let (refused, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(5),
            a.claim("jobs", 100, Duration::from_secs(30))
        ),
        end_lock_session(&database, "jobs"),
    );
    let refused = refused.expect("the waiting claim ends within 5 s");
    assert_eq!(refused.err(), Some(StoreError::GroupMoved("jobs".into())));

    // Within 5 s one of the instances drives the group again, from the checkpoint a
    // saved: everything not acknowledged is delivered again.
    let owner = loop {
        let (at_a, at_b) = (
            a.route("jobs").await.unwrap(),
            b.route("jobs").await.unwrap(),
        );
        match (&at_a, &at_b) {
            (GroupRoute::Here, GroupRoute::Owner(url)) if url == "http://a.invalid" => break &a,
            (GroupRoute::Owner(url), GroupRoute::Here) if url == "http://b.invalid" => break &b,
            _ => {}
        }
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "nobody took the group over: {at_a:?} {at_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "group taken over by the ownership round after its lock session ended: {:?}",
        ended.elapsed()
    );
    let again = owner.claim("jobs", 100, Duration::ZERO).await.unwrap();
    let positions: Vec<u64> = again.iter().map(|d| d.event.position).collect();
    assert_eq!(positions, (3..=20).collect::<Vec<_>>());
    owner.ack("jobs", &positions).await.unwrap();
    let status = owner.status("jobs").await.unwrap();
    assert_eq!((status.checkpoint, status.in_flight), (20, 0));
    assert_eq!(stored_checkpoint(&database, "jobs").await, 20);
}
