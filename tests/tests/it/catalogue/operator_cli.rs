//! The operator's path (`billing-svc plans`, `billing_svc::catalogue_cli`)
//! and the stack's seed of its demo plans, against the real service: plan
//! files, replays of the same file, reprices that find their price already
//! made, and a seed that creates what is absent, once.
use billing_svc::catalogue_cli::{Catalog, DEMO_PLANS, Ensured, Repriced, describe, plans_from_json};
use tests::{harness::ADMIN_TOKEN, helpers::scalar, spawn_app};
use tonic::Code;

const TEAM: &str = include_str!("../../../../examples/plans/team.json");

fn catalog(app: &tests::TestApp) -> Catalog {
    Catalog::new(&format!("http://{}", app.billing_addr), ADMIN_TOKEN).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_file_is_created_once_and_a_reprice_is_made_once() {
    let app = spawn_app().await;
    let cat = catalog(&app);
    let team = plans_from_json(TEAM).unwrap();
    let first = cat.create(&team[0]).await.unwrap();
    assert_eq!(cat.create(&team[0]).await.unwrap(), first, "the same file again is a replay");
    let mut changed = plans_from_json(&TEAM.replace("\"Team\"", "\"Team 2\"")).unwrap();
    changed[0].validate_only = true;
    assert_eq!(cat.create(&changed[0]).await.unwrap_err().code(), Code::AlreadyExists, "another file, the same id");

    let Repriced::Made(v2) = cat.reprice("team-monthly", 349_900, None, false).await.unwrap() else {
        panic!("a new price makes a version")
    };
    assert_eq!((v2.version, v2.price_minor, v2.currency.as_str()), (2, 349_900, "INR"));
    assert!(matches!(cat.reprice("team-monthly", 349_900, None, false).await.unwrap(), Repriced::Unchanged(_)));
    let Repriced::Made(would) = cat.reprice("team-monthly", 1, Some("USD"), true).await.unwrap() else {
        panic!("validate_only answers the version it would make")
    };
    assert_eq!((would.version, would.currency.as_str()), (3, "USD"));
    assert!(cat.reprice("gold", 1, None, false).await.is_err());

    let listed = cat.list(false).await.unwrap();
    let team = listed.iter().find(|p| p.plan.as_ref().unwrap().id == "team-monthly").unwrap();
    assert_eq!(team.versions.len(), 2, "validate_only made nothing");
    let text = describe(team);
    assert!(text.contains("v1 299900 INR/monthly, 3000 credits, sessions unlimited, minutes 6000"), "{text}");
    assert!(text.contains("v2 349900 INR/monthly") && text.contains("<- current"), "{text}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions WHERE plan_id = 'team-monthly'").await, 2);
}

/// The stack's seed: what is absent is created through CreatePlan (two
/// seeds at once make each plan once), what is present is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_creates_what_is_absent_once_and_leaves_the_rest() {
    let app = spawn_app().await;
    let cat = catalog(&app);
    // billing's first migration made the demo plans, with the terms the
    // demo file gives them.
    let demo = plans_from_json(DEMO_PLANS).unwrap();
    assert_eq!(
        cat.ensure(&demo).await.unwrap(),
        [("basic-monthly".into(), Ensured::Present), ("pro-monthly".into(), Ensured::Present)]
    );
    for want in &demo {
        let mut dry = want.clone();
        dry.validate_only = true;
        dry.plan_id = format!("dry-{}", want.plan_id);
        let would = cat.create(&dry).await.unwrap().versions.remove(0);
        let have = cat.get(&want.plan_id).await.unwrap().unwrap().versions.remove(0);
        let terms = |v: &proto::billing::v1::PriceVersion| (v.price_minor, v.currency.clone(), v.credits_per_period, v.limits);
        assert_eq!(terms(&would), terms(&have), "{}: the demo file describes the plan the migration made", want.plan_id);
    }

    let renamed = plans_from_json(&DEMO_PLANS.replace("-monthly", "-seeded")).unwrap();
    let other = catalog(&app);
    let (a, b) = tokio::join!(cat.ensure(&renamed), other.ensure(&renamed));
    let (a, b) = (a.unwrap(), b.unwrap());
    for i in 0..2 {
        assert!(a[i].1 == Ensured::Created || b[i].1 == Ensured::Created, "{a:?} {b:?}");
    }
    assert!(cat.ensure(&renamed).await.unwrap().iter().all(|(_, e)| *e == Ensured::Present));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions WHERE plan_id LIKE '%-seeded'").await, 2);
}
