// Diesel table definitions; tests/tests/it/contract/schema.rs fails when they and the migrated database disagree.

diesel::table! {
    plans (id) {
        id -> Text,
        name -> Text,
        price_minor -> BigInt,
        currency -> Bpchar,
        period -> Text,
        credits_per_period -> BigInt,
        deduction_interval_seconds -> Integer,
        max_sessions_per_period -> Integer,
        max_minutes_per_period -> Integer,
        max_upload_bytes -> BigInt,
        active -> Bool,
        created_at -> Timestamptz,
        current_version -> Integer,
        archived_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    plan_versions (plan_id, version) {
        plan_id -> Text,
        version -> Integer,
        price_minor -> BigInt,
        currency -> Bpchar,
        period -> Text,
        credits_per_period -> BigInt,
        max_sessions_per_period -> Nullable<Integer>,
        max_minutes_per_period -> Nullable<Integer>,
        max_upload_bytes -> Nullable<BigInt>,
        trial_days -> Nullable<Integer>,
        created_at -> Timestamptz,
    }
}

// Migrations of subscribers between versions (plans::migrations reads
// them with SQL).
diesel::table! {
    plan_migrations (id) {
        id -> Uuid,
        seq -> BigInt,
        plan_id -> Text,
        from_version -> Integer,
        to_version -> Integer,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    plan_migration_subscriptions (migration_id, subscription_id) {
        migration_id -> Uuid,
        subscription_id -> Uuid,
    }
}

diesel::table! {
    orders (id) {
        id -> Text,
        checkout_session_id -> Nullable<Uuid>,
        user_id -> Text,
        plan_id -> Text,
        amount_minor -> BigInt,
        currency -> Bpchar,
        status -> Text,
        payment_id -> Nullable<Text>,
        paid_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        seq -> BigInt,
        renews_subscription_id -> Nullable<Uuid>,
        renews_period_start -> Nullable<Timestamptz>,
        charge_attempts -> Integer,
        next_charge_at -> Nullable<Timestamptz>,
        last_charge_error -> Nullable<Text>,
        pending_payment_id -> Nullable<Text>,
        mandate_max_amount_minor -> Nullable<BigInt>,
        mandate_expires_at -> Nullable<Timestamptz>,
        plan_version -> Integer,
        plan_change_id -> Nullable<Uuid>,
        priced_minor -> Nullable<BigInt>,
    }
}

diesel::table! {
    subscriptions (id) {
        id -> Uuid,
        user_id -> Text,
        plan_id -> Text,
        order_id -> Nullable<Text>,
        status -> Text,
        anchor_at -> Timestamptz,
        calendar_periods -> Bool,
        period_start -> Timestamptz,
        period_end -> Timestamptz,
        credits_granted -> BigInt,
        credits_remaining -> BigInt,
        replaced_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        cancel_at_period_end -> Bool,
        ended_at -> Nullable<Timestamptz>,
        gateway_customer_id -> Nullable<Text>,
        gateway_token_id -> Nullable<Text>,
        gateway_email -> Nullable<Text>,
        gateway_contact -> Nullable<Text>,
        mandate_max_amount_minor -> Nullable<BigInt>,
        mandate_expires_at -> Nullable<Timestamptz>,
        plan_version -> Integer,
        trial_end -> Nullable<Timestamptz>,
        next_plan_version -> Nullable<Integer>,
    }
}

diesel::table! {
    gateway_customers (user_id) {
        user_id -> Text,
        customer_id -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_events (event_id) {
        event_id -> Text,
        event_type -> Text,
        body -> Bytea,
        order_id -> Nullable<Text>,
        outcome -> Text,
        detail -> Text,
        received_at -> Timestamptz,
        reviewed_note -> Nullable<Text>,
    }
}

diesel::table! {
    payment_discrepancies (id) {
        id -> BigInt,
        payment_id -> Text,
        order_id -> Nullable<Text>,
        kind -> Text,
        amount_minor -> Nullable<BigInt>,
        currency -> Nullable<Text>,
        status -> Text,
        source -> Text,
        detail -> Text,
        note -> Nullable<Text>,
        created_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    refunds (id) {
        id -> Text,
        payment_id -> Text,
        order_id -> Nullable<Text>,
        discrepancy_id -> Nullable<BigInt>,
        amount_minor -> BigInt,
        currency -> Text,
        status -> Text,
        reason -> Text,
        gateway_refund_id -> Nullable<Text>,
        detail -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        asking_until -> Nullable<Timestamptz>,
        attempts -> Integer,
    }
}

diesel::table! {
    usage_sessions (id) {
        id -> Uuid,
        user_id -> Text,
        subscription_id -> Uuid,
        kind -> Text,
        status -> Text,
        started_at -> Timestamptz,
        ended_at -> Nullable<Timestamptz>,
        deduction_interval_seconds -> Integer,
        auto_deductions_processed -> BigInt,
        manual_deductions -> BigInt,
        next_unit_index -> BigInt,
        units_charged -> BigInt,
        units_unpaid -> BigInt,
        final_units_charged -> Nullable<BigInt>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    ledger (id) {
        id -> BigInt,
        subscription_id -> Uuid,
        period_start -> Timestamptz,
        usage_session_id -> Nullable<Uuid>,
        unit_index -> Nullable<BigInt>,
        kind -> Text,
        credits -> BigInt,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    deductions (usage_session_id, deduction_id) {
        usage_session_id -> Uuid,
        deduction_id -> Text,
        units -> BigInt,
        units_charged -> BigInt,
        units_unpaid -> BigInt,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    reconcile_audit (id) {
        id -> BigInt,
        kind -> Text,
        subject_id -> Text,
        action -> Text,
        created_at -> Timestamptz,
        note -> Nullable<Text>,
    }
}

diesel::table! {
    usage_stats_daily (day, plan_id) {
        day -> Date,
        plan_id -> Text,
        sessions -> BigInt,
        minutes -> BigInt,
        credits -> BigInt,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    plan_changes (id) {
        id -> Uuid,
        subscription_id -> Uuid,
        timing -> Text,
        status -> Text,
        from_plan_id -> Text,
        from_version -> Integer,
        to_plan_id -> Text,
        to_version -> Integer,
        period_start -> Timestamptz,
        period_end -> Timestamptz,
        amount_minor -> BigInt,
        currency -> Bpchar,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        applied_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(orders -> plans (plan_id));
diesel::joinable!(plan_changes -> subscriptions (subscription_id));
diesel::joinable!(subscriptions -> plans (plan_id));
diesel::joinable!(plan_versions -> plans (plan_id));
diesel::joinable!(usage_sessions -> subscriptions (subscription_id));
diesel::allow_tables_to_appear_in_same_query!(
    plans,
    plan_versions,
    orders,
    subscriptions,
    usage_sessions,
    ledger,
    deductions,
    refunds,
    plan_changes
);
