//! Contexts started through other contexts (after Mitogen's nested_test and
//! id_allocation_test): a 10-hop chain and the id allocation sequence.

mod common;

use common::Controller;
use ferrogen::connect::ContextInfo;
use ferrogen::ping::PING_SERVICE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hop_chain() {
    let c = Controller::new();
    let mut chain: Vec<ContextInfo> = Vec::new();
    for _ in 0..10 {
        let via = chain.last().map(|i| i.id);
        chain.push(c.connect(via).await);
    }
    let last = chain.last().unwrap();

    let who: (u32, u32, u32) = c.call(last.id, "whoami", &()).await;
    assert_eq!(who, (last.id, 0, 0));
    let info: ContextInfo = c
        .router
        .call_service(last.id, PING_SERVICE, "info", &())
        .await
        .expect("info");
    assert_eq!(
        (info.id, &info.name, info.pid),
        (last.id, &last.name, last.pid)
    );

    // Its ancestors, nearest first, ending with the controller.
    let parents: Vec<u32> = c.call(last.id, "parent_ids", &()).await;
    let mut want: Vec<u32> = chain[..9].iter().rev().map(|i| i.id).collect();
    want.push(0);
    assert_eq!(parents, want);

    // Every hop is a distinct process with a distinct id.
    let mut ids: Vec<u32> = chain.iter().map(|i| i.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10);

    // Upwards too: the last context calls the controller, and the first
    // hop, which is an ancestor, may call its ParentsOnly methods.
    let r: Result<u32, (Option<ferrogen::call::RemoteError>, String)> = c
        .call(last.id, "call_u32", &(0u32, "anyone".to_string(), 1u32))
        .await;
    assert_eq!(r, Ok(2));
    let r: Result<u32, (Option<ferrogen::call::RemoteError>, String)> = c
        .call(
            chain[0].id,
            "call_u32",
            &(last.id, "parents_only".to_string(), 1u32),
        )
        .await;
    assert_eq!(r, Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_allocation_matches_mitogen() {
    let c = Controller::new();
    // First local child of the controller is 1.
    let a = c.connect(None).await;
    assert_eq!(a.id, 1);
    // The child's own children come from a block starting at 2.
    let a1 = c.connect(Some(a.id)).await;
    let a2 = c.connect(Some(a.id)).await;
    assert_eq!((a1.id, a2.id), (2, 3));
    // That block was 1000 ids: the controller's next child is 1002.
    let b = c.connect(None).await;
    assert_eq!(b.id, 1002);
    // A grandchild starting children takes the next block.
    let a11 = c.connect(Some(a1.id)).await;
    assert_eq!(a11.id, 1003);
    let b2 = c.connect(None).await;
    assert_eq!(b2.id, 2003);
}
