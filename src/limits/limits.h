#pragma once
// Rate limits. Interfaces of this folder:
//  * algorithms.h          pure meters (GCRA, token bucket, sliding window): exact integer ns math,
//                          `now` passed in, check / consume / adjust. Not thread safe (values).
//  * limit_spec.h          LimitSpec, Plan, default plans, key overrides. Immutable values.
//  * limit_store.h         LimitStore: all limits of a request checked and consumed atomically,
//                          all-or-nothing. Implementations are thread safe.
//  * memory_limit_store.h  the in-process sharded store with idle eviction and an entry cap.
//  * limiter.h             Limiter façade for the pipeline: scope matching, verdict, settle,
//                          the x-ratelimit-* header lines.
//  * client_ip.h           client address behind trusted proxies (X-Forwarded-For).
// Configuration reference: docs/limits.md.
#include "limits/algorithms.h"
#include "limits/client_ip.h"
#include "limits/limit_spec.h"
#include "limits/limit_store.h"
#include "limits/limiter.h"
#include "limits/memory_limit_store.h"
#include "limits/redis_limit_store.h"
