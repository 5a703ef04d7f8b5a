//! The public contracts of checkout-svc and billing-svc, generated from
//! `proto/*/v1/*.proto`, and the error contract both follow ([`error`]).

pub mod codec;
pub mod error;

pub mod checkout {
    // The docs below are the .proto comments, written as prose for every
    // language (`<id>`, [brackets], bare URLs), not as rustdoc.
    // WatchEventsResponse's oneof holds an event or a small bookmark.
    #[allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links, rustdoc::bare_urls, clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("checkout.v1");
        include!(concat!(env!("OUT_DIR"), "/server/checkout.v1.rs"));
    }
}

pub mod billing {
    // The docs below are the .proto comments, written as prose for every
    // language (`<id>`, [brackets], bare URLs), not as rustdoc.
    // WatchEventsResponse's oneof holds an event or a small bookmark.
    #[allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links, rustdoc::bare_urls, clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("billing.v1");
        include!(concat!(env!("OUT_DIR"), "/server/billing.v1.rs"));
    }
}

pub mod payments {
    pub mod errors {
        pub mod v1 {
            tonic::include_proto!("payments.errors.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of both packages, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Health-check service names (the readiness signal of each service).
pub const CHECKOUT_SERVICE_NAME: &str = "checkout.v1.CheckoutService";
pub const BILLING_SERVICE_NAME: &str = "billing.v1.BillingService";
/// billing's plan catalogue (admin), served beside BillingService.
pub const PLAN_CATALOG_SERVICE_NAME: &str = "billing.v1.PlanCatalogService";
