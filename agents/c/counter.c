/*
 * counter.c — C counter agent: counts its steps in a global and in a
 * bump-allocated heap cell (checking they agree); logs every 100 ticks.
 * Build: scripts/build-agents.sh (-> target/agents/c_counter.wasm).
 */
#include "lockstep_agent.h"

LOCKSTEP_DEFINE_ABI_VERSION()
LOCKSTEP_DEFINE_BUFFER(64 * 1024)

static uint64_t steps;       /* in a global */
static uint64_t *heap_steps; /* on the heap */
static uint64_t received;

LOCKSTEP_EXPORT(agent_init) int32_t agent_init(void) {
    if (!heap_steps) {
        heap_steps = lockstep_bump_alloc(sizeof *heap_steps);
        if (!heap_steps) {
            return 1;
        }
    }
    steps = 0;
    *heap_steps = 0;
    received = 0;
    return 0;
}

LOCKSTEP_EXPORT(agent_step) int32_t agent_step(const lockstep_step_context *ctx) {
    if (!lockstep_ctx_valid(ctx)) {
        return -1001;
    }
    if (!heap_steps) {
        return -1000; /* not initialised */
    }
    steps++;
    (*heap_steps)++;
    if (steps != *heap_steps) {
        return 1; /* memory corrupted */
    }
    if (ctx->tick % 100u == 0) {
        char line[96];
        uint32_t n = 0;
        lockstep_append_str(line, &n, sizeof line, "c counter: tick ");
        lockstep_append_u64(line, &n, sizeof line, ctx->tick);
        lockstep_append_str(line, &n, sizeof line, " steps ");
        lockstep_append_u64(line, &n, sizeof line, steps);
        lockstep_append_str(line, &n, sizeof line, " received ");
        lockstep_append_u64(line, &n, sizeof line, received);
        lockstep_log(LOCKSTEP_LOG_INFO, line, n);
    }
    return 0;
}

LOCKSTEP_EXPORT(agent_receive) int32_t agent_receive(const lockstep_message *msg) {
    if (!lockstep_msg_valid(msg)) {
        return -1001;
    }
    received++;
    return 0;
}

LOCKSTEP_EXPORT(agent_shutdown) int32_t agent_shutdown(void) {
    LOCKSTEP_LOG_LIT(LOCKSTEP_LOG_INFO, "c counter: shutdown");
    return 0;
}

/* Extra export (ignored by the runtime): steps counted since agent_init. */
LOCKSTEP_EXPORT(counter_steps) int64_t counter_steps(void) {
    return (int64_t)steps;
}
