#pragma once
// Cost guard: the interface the gateway uses to keep spend under budget caps.
//
//   pricing.h        PriceTable, cost_micros(), estimate_prompt_tokens(), worst_case()
//   budget_manager.h BudgetManager: reserve / settle / release, downgrade, alerts, snapshots
//   ledger.h         Ledger (abstract); store/sqlite_ledger.h and store/pg_ledger.h implement it
//   recovery.h       recover_budgets() at startup, reconcile() for open reservations
//   key_store.h      KeyStore (abstract); store/sqlite_key_store.h and store/pg_key_store.h
//   alerts.h         alert payload + signature, WebhookSender (own thread, bounded queue)
//
// Request flow (gateway phase 5 "cost guard" and phase 9 "settle"):
//   1. price = prices.find(model) (no price: refuse), est = estimate_prompt_tokens(chars, msgs)
//   2. if (auto m = budgets.should_downgrade(ids, model, key.downgrade_opt_out, now_ms)) switch
//   3. wc = worst_case(price, est, max_tokens); forward max_tokens = wc.completion_tokens
//   4. r = budgets.reserve(ids, wc.cost, now_ms); refused -> 429 budget_exceeded, Retry-After
//   5. ledger.append_reservation(...) and forward only after its callback reported ok
//   6. on completion: actual = cost_micros(price, usage...); out = budgets.settle(r, actual, ms);
//      ledger.append_settlement(...); for (a : out.alerts) webhook.enqueue(a)
//      on refusal/error before billing: budgets.release(r) + a kReleased settlement
// Thread safety: see each header; all classes are safe to share across worker threads.
#include "cost/alerts.h"
#include "cost/budget_manager.h"
#include "cost/key_store.h"
#include "cost/ledger.h"
#include "cost/money.h"
#include "cost/period.h"
#include "cost/pricing.h"
#include "cost/recovery.h"
