//! Gateway webhooks: the HTTP endpoint and the stored inbox behind it and
//! HandleGatewayWebhook (refund events: `refunds::webhooks`).
mod http;
mod inbox;
