//! ArchivePlan and UnarchivePlan (docs/design.md, "Catalogue": archived ⇄
//! on sale): one handler for both, over one catalogue function, so the two
//! directions share their checks, key store and locking.
use proto::billing::v1 as pb;
use shared::{
    auth::require_admin,
    idempotency::{Key, encode_with, respond},
};
use tonic::Request;
use tracing::instrument;

use super::{super::run, RpcResult, catalog_plan, no_request_id, requests::PlanSale};
use crate::{
    App,
    plans::catalogue::{self, Changed, Sale},
};

/// A request that puts a plan on sale or archives it.
pub(super) trait SaleRequest: prost::Message + Clone + Default + Send + 'static {
    /// The key store's scope of the RPC.
    const METHOD: &'static str;
    /// Where the plan goes.
    const TO: Sale;
    type Response: prost::Message + Default + Send + 'static;
    fn plan_id(&self) -> &str;
    fn request_id(&mut self) -> &mut String;
    fn parse(self) -> Result<PlanSale, tonic::Status>;
    fn response(c: &Changed) -> Self::Response;
}

/// The two requests have the same fields; only the RPC, the direction and
/// the response type differ.
macro_rules! sale_request {
    ($request:ty, $response:ident, $method:literal, $to:expr) => {
        impl SaleRequest for $request {
            const METHOD: &'static str = $method;
            const TO: Sale = $to;
            type Response = pb::$response;
            fn plan_id(&self) -> &str {
                &self.plan_id
            }
            fn request_id(&mut self) -> &mut String {
                &mut self.request_id
            }
            fn parse(self) -> Result<PlanSale, tonic::Status> {
                PlanSale::parse(self.plan_id, &self.request_id, self.validate_only, self.etag)
            }
            fn response(c: &Changed) -> pb::$response {
                pb::$response { plan: Some(catalog_plan(&c.plan)) }
            }
        }
    };
}

sale_request!(pb::ArchivePlanRequest, ArchivePlanResponse, "billing.ArchivePlan", Sale::Archived);
sale_request!(pb::UnarchivePlanRequest, UnarchivePlanResponse, "billing.UnarchivePlan", Sale::OnSale);

/// ArchivePlan or UnarchivePlan, as `T` says.
#[instrument(skip_all, fields(method = T::METHOD, plan_id = %req.get_ref().plan_id()))]
pub(super) async fn put<T: SaleRequest>(app: &App, req: Request<T>) -> RpcResult<T::Response> {
    require_admin(&req)?;
    let r = req.get_ref().clone().parse()?;
    let key = Key::from_request_with_id(&req, T::METHOD, T::request_id)?.ok_or_else(no_request_id)?;
    let app = app.clone();
    let out = run(async move {
        let encode = encode_with(T::response);
        let how = catalogue::Run { key: &key, validate_only: r.validate_only, encode: &encode, now: app.clock.now() };
        catalogue::put(&mut *app.conn().await?, &how, &r.id, r.etag.as_ref(), T::TO).await
    })
    .await?;
    respond(out, T::response)
}
