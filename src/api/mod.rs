//! The HTTP API served by `sallyport serve`: `POST /v1/certificates`,
//! `GET /v1/ca`, `GET /v1/login-config`, approvals, `GET /healthz`.
