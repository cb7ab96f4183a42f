#pragma once
// The error catalogue: every (status, type, code) a client of the gateway can see. Phases build
// their errors from these entries (errors::make), and docs/errors.md lists the same table.
// Errors of the layers below keep their own constructors but appear here too:
//   request decoding (providers/openai.cc), the upstream client (http/client.cc), admission
//   refusals (admission/admission_controller.cc) and the HTTP server's protocol errors.
#include <array>
#include <string>
#include <string_view>

#include "common/result.h"

namespace bw::gateway::errors {

struct Spec {
  int status;
  std::string_view type;
  std::string_view code;
};

inline Error make(const Spec& s, std::string message, std::string param = {}) {
  return make_error(s.status, std::string(s.type), std::string(s.code), std::move(message),
                    std::move(param));
}

// Requests, routing and authentication.
inline constexpr Spec kBadRequest{400, "invalid_request_error", ""};
inline constexpr Spec kInvalidJson{400, "invalid_request_error", "invalid_json"};
inline constexpr Spec kInvalidApiKey{401, "invalid_request_error", "invalid_api_key"};
inline constexpr Spec kInvalidAdminKey{401, "invalid_request_error", "invalid_admin_key"};
inline constexpr Spec kModelNotAllowed{403, "permission_error", "model_not_allowed"};
inline constexpr Spec kModelNotPriced{403, "invalid_request_error", "model_not_priced"};
inline constexpr Spec kModelNotFound{404, "invalid_request_error", "model_not_found"};
inline constexpr Spec kUnknownUrl{404, "invalid_request_error", "unknown_url"};
inline constexpr Spec kMethodNotAllowed{405, "invalid_request_error", "method_not_allowed"};
inline constexpr Spec kRequestTooLarge{413, "invalid_request_error", "request_too_large"};
inline constexpr Spec kHeadersTooLarge{431, "invalid_request_error",
                                       "request_header_fields_too_large"};
// Limits, budgets, admission.
inline constexpr Spec kRateLimited{429, "rate_limit_exceeded", "rate_limit_exceeded"};
inline constexpr Spec kUpstreamRateLimited{429, "rate_limit_exceeded", "upstream_rate_limited"};
inline constexpr Spec kInsufficientQuota{429, "insufficient_quota", "insufficient_quota"};
inline constexpr Spec kLimitsUnavailable{503, "service_unavailable", "limits_unavailable"};
inline constexpr Spec kLedgerUnavailable{503, "server_error", "ledger_unavailable"};
inline constexpr Spec kQueueFull{503, "server_error", "queue_full"};
inline constexpr Spec kShedByHigherPriority{503, "server_error", "shed_by_higher_priority"};
inline constexpr Spec kOverloaded{503, "server_error", "overloaded"};
inline constexpr Spec kQueueTimeout{503, "server_error", "queue_timeout"};
inline constexpr Spec kClientClosedRequest{499, "invalid_request_error", "client_closed_request"};
// A rate-limit wait that the admission queue refused answers as a rate limit with the queue's
// code.
inline constexpr Spec kWaitQueueFull{429, "rate_limit_exceeded", "queue_full"};
inline constexpr Spec kWaitShed{429, "rate_limit_exceeded", "shed_by_higher_priority"};
inline constexpr Spec kWaitOverloaded{429, "rate_limit_exceeded", "overloaded"};
inline constexpr Spec kWaitTimeout{429, "rate_limit_exceeded", "queue_timeout"};
// Upstreams.
inline constexpr Spec kUpstreamDegraded{503, "service_unavailable", "upstream_degraded"};
inline constexpr Spec kUpstreamConnectError{502, "upstream_error", "upstream_connect_error"};
inline constexpr Spec kUpstreamReset{502, "upstream_error", "upstream_reset"};
inline constexpr Spec kUpstreamTimeout{504, "upstream_error", "upstream_timeout"};
inline constexpr Spec kUpstreamConnectionLimit{503, "upstream_error", "upstream_connection_limit"};
// Sent as a last SSE event of a stream already answered 200.
inline constexpr Spec kUpstreamTruncated{200, "upstream_error", "upstream_truncated"};
// Translation between client APIs and provider types.
inline constexpr Spec kUnsupportedParams{400, "invalid_request_error", "unsupported_parameter"};
inline constexpr Spec kPreviousResponseNotFound{404, "invalid_request_error",
                                                "previous_response_not_found"};
inline constexpr Spec kResponseStoreUnavailable{503, "service_unavailable",
                                                "response_store_unavailable"};
// Admin API.
inline constexpr Spec kNotFound{404, "invalid_request_error", "not_found"};
inline constexpr Spec kDlqDisabled{404, "invalid_request_error", "dlq_disabled"};
inline constexpr Spec kNoLedger{404, "invalid_request_error", "no_ledger"};
inline constexpr Spec kNoKeyStore{404, "invalid_request_error", "no_key_store"};
inline constexpr Spec kKeyGone{409, "invalid_request_error", "key_gone"};
inline constexpr Spec kInvalidKeySpec{400, "invalid_request_error", "invalid_key_spec"};
inline constexpr Spec kInvalidReconcile{400, "invalid_request_error", "invalid_reconcile"};
inline constexpr Spec kBadGroup{400, "invalid_request_error", "bad_group"};
inline constexpr Spec kInvalidModel{400, "invalid_request_error", "invalid_model"};
inline constexpr Spec kInvalidBudget{400, "invalid_request_error", "invalid_budget"};
inline constexpr Spec kInvalidPriority{400, "invalid_request_error", "invalid_priority"};
inline constexpr Spec kKeyNotFound{404, "invalid_request_error", "key_not_found"};
inline constexpr Spec kDeadLetterTooLarge{413, "invalid_request_error", "dead_letter_too_large"};
inline constexpr Spec kServerError{500, "server_error", ""};

inline constexpr std::array kAll = {
    kBadRequest,
    kInvalidJson,
    kInvalidApiKey,
    kInvalidAdminKey,
    kModelNotAllowed,
    kModelNotPriced,
    kModelNotFound,
    kUnknownUrl,
    kMethodNotAllowed,
    kRequestTooLarge,
    kHeadersTooLarge,
    kRateLimited,
    kUpstreamRateLimited,
    kInsufficientQuota,
    kLimitsUnavailable,
    kLedgerUnavailable,
    kQueueFull,
    kShedByHigherPriority,
    kOverloaded,
    kQueueTimeout,
    kClientClosedRequest,
    kWaitQueueFull,
    kWaitShed,
    kWaitOverloaded,
    kWaitTimeout,
    kUpstreamDegraded,
    kUpstreamConnectError,
    kUpstreamReset,
    kUpstreamTimeout,
    kUpstreamConnectionLimit,
    kUpstreamTruncated,
    kUnsupportedParams,
    kPreviousResponseNotFound,
    kResponseStoreUnavailable,
    kNotFound,
    kDlqDisabled,
    kNoLedger,
    kNoKeyStore,
    kKeyGone,
    kInvalidKeySpec,
    kInvalidReconcile,
    kBadGroup,
    kInvalidModel,
    kInvalidBudget,
    kInvalidPriority,
    kKeyNotFound,
    kDeadLetterTooLarge,
    kServerError,
};

}  // namespace bw::gateway::errors
