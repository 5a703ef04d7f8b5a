// Diesel table definitions; tests/tests/it/contract/schema.rs fails when they and the migrated database disagree.

diesel::table! {
    checkout_sessions (id) {
        id -> Uuid,
        user_id -> Text,
        plan_id -> Text,
        status -> Text,
        amount_minor -> BigInt,
        currency -> Bpchar,
        order_id -> Text,
        expires_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        replaced_by -> Nullable<Uuid>,
        recovered_from -> Nullable<Uuid>,
        subscription_id -> Nullable<Text>,
        payment_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        order_cancellation -> Nullable<Text>,
    }
}
