//! Order views and missing ids: BatchGetOrders and CancelOrders answer the
//! BASIC view unless asked for FULL (refunds included), and name the ids
//! that matched no order instead of dropping them silently.
use proto::billing::v1 as bpb;
use tests::{TestApp, spawn_app};

/// A paid order with a partial refund, and an unpaid one.
async fn seed(app: &TestApp) -> (bpb::Order, bpb::Order) {
    let paid = app.order("views-user", "basic-monthly").await;
    let (payment_id, signature) = app.pay(&paid.id);
    app.billing
        .clone()
        .verify_payment(bpb::VerifyPaymentRequest { order_id: paid.id.clone(), payment_id, signature })
        .await
        .unwrap();
    app.billing_admin
        .clone()
        .refund_payment(bpb::RefundPaymentRequest {
            order_id: paid.id.clone(),
            amount_minor: 100,
            reason: "goodwill".into(),
            refund_id: "views-refund".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let open = app.order("views-other", "basic-monthly").await;
    (paid, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_get_orders_answers_basic_by_default_full_on_request_and_names_missing_ids() {
    let app = spawn_app().await;
    let (paid, open) = seed(&app).await;
    let mut b = app.billing.clone();
    let unknown_session = uuid::Uuid::new_v4().to_string();
    let request = |view: bpb::OrderView| bpb::BatchGetOrdersRequest {
        order_ids: vec![paid.id.clone(), "order_unknown".into(), "order_unknown".into()],
        // Upper case: a session id matches in any spelling of its UUID.
        checkout_session_ids: vec![open.checkout_session_id.to_uppercase(), unknown_session.clone()],
        view: view as i32,
    };

    // The legacy form (no view): BASIC, as before; the unknown ids are named once each.
    for view in [bpb::OrderView::Unspecified, bpb::OrderView::Basic] {
        let r = b.batch_get_orders(request(view)).await.unwrap().into_inner();
        let mut ids: Vec<_> = r.orders.iter().map(|o| o.id.clone()).collect();
        ids.sort();
        let mut want = vec![paid.id.clone(), open.id.clone()];
        want.sort();
        assert_eq!(ids, want, "{view:?}");
        assert!(r.orders.iter().all(|o| o.refunds.is_empty()), "{view:?}: BASIC has no refunds");
        assert_eq!(r.missing_ids, vec!["order_unknown".to_owned(), unknown_session.clone()], "{view:?}");
    }

    // FULL: the paid order with its refund, as GetOrder shows it.
    let r = b.batch_get_orders(request(bpb::OrderView::Full)).await.unwrap().into_inner();
    let full = r.orders.iter().find(|o| o.id == paid.id).unwrap();
    assert_eq!(full.refunds.len(), 1);
    assert_eq!(full.amount_refunded_minor, 100);
    let got = b.get_order(bpb::GetOrderRequest { id: paid.id.clone() }).await.unwrap().into_inner().order.unwrap();
    assert_eq!(&got, full);
    assert_eq!(r.missing_ids.len(), 2);

    // Everything found: nothing missing.
    let r = b
        .batch_get_orders(bpb::BatchGetOrdersRequest { order_ids: vec![open.id.clone()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.orders.len(), r.missing_ids.len()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_orders_names_missing_ids_and_answers_full_on_request() {
    let app = spawn_app().await;
    let (paid, open) = seed(&app).await;
    let mut b = app.billing.clone();

    // Legacy form: BASIC; the unknown id is named, the found ones answered.
    let r = b
        .cancel_orders(bpb::CancelOrdersRequest {
            order_ids: vec![open.id.clone(), "order_nope".into(), paid.id.clone(), "order_nope".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing_ids, vec!["order_nope".to_owned()]);
    let status = |id: &str| r.orders.iter().find(|o| o.id == id).map(|o| o.status);
    assert_eq!(status(&open.id), Some(bpb::OrderStatus::Cancelled as i32));
    assert_eq!(status(&paid.id), Some(bpb::OrderStatus::Paid as i32));
    assert!(r.orders.iter().all(|o| o.refunds.is_empty()));

    // FULL: a repeat (idempotent) answers the paid order with its refund.
    let r = b
        .cancel_orders(bpb::CancelOrdersRequest {
            order_ids: vec![paid.id.clone(), "order_gone".into()],
            view: bpb::OrderView::Full as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing_ids, vec!["order_gone".to_owned()]);
    assert_eq!(r.orders.len(), 1);
    assert_eq!(r.orders[0].refunds.len(), 1);
    assert_eq!(r.orders[0].status, bpb::OrderStatus::Paid as i32);
}
