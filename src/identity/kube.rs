//! Kubernetes service-account tokens: the optional TokenReview through the
//! bastion's own kube client. A projected token verifies offline against the
//! cluster issuer's JWKS, but only the API server knows whether the bound pod
//! (and the service account) still exist; TokenReview asks it.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::oidc::Error;

/// Ask the API server whether `token` is still valid for `audiences`.
pub async fn token_review(
    client: Option<&kube::Client>,
    token: &str,
    audiences: &[String],
) -> Result<(), Error> {
    let Some(client) = client else {
        return Err(Error::TokenReview(
            "token_review is on but the bastion has no Kubernetes client (set [kube] kubeconfig or run in a pod)"
                .into(),
        ));
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(audiences.to_vec()),
        },
        ..Default::default()
    };
    let out = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| Error::Upstream {
            alias: "kubernetes".into(),
            message: format!("TokenReview: {e}"),
        })?;
    let status = out.status.unwrap_or_default();
    if status.authenticated == Some(true) {
        Ok(())
    } else {
        Err(Error::TokenReview(
            status
                .error
                .unwrap_or_else(|| "not authenticated".to_string()),
        ))
    }
}
