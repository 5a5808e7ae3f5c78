/*
 * lockstep_agent.h — Lockstep agent ABI v1.0 (docs/abi.md) for C agents.
 *
 * Build freestanding with clang (no libc needed):
 *
 *   clang --target=wasm32 -std=c11 -O2 -ffreestanding -nostdlib \
 *         -Wl,--no-entry -Wl,-z,stack-size=65536 -o agent.wasm agent.c
 *
 * An agent must export memory (wasm-ld does by default) and the functions
 * agent_abi_version, agent_buffer, agent_init, agent_step, agent_receive and
 * agent_shutdown (agent_migrate is optional).  LOCKSTEP_EXPORT(name) marks a
 * function as an export; LOCKSTEP_DEFINE_ABI_VERSION() and
 * LOCKSTEP_DEFINE_BUFFER(bytes) define the first two.  See agents/c/counter.c.
 *
 * All integers are little-endian (as wasm is); pointers and lengths are
 * 32-bit offsets into linear memory, interpreted as unsigned by the host.
 */
#ifndef LOCKSTEP_AGENT_H
#define LOCKSTEP_AGENT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "lockstep_agent.h targets wasm32 (clang --target=wasm32)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- constants ------------------------------------------------------------ */

#define LOCKSTEP_ABI_VERSION 0x00010000 /* (major << 16) | minor */
#define LOCKSTEP_ABI_MAJOR(v) ((uint32_t)(v) >> 16)
#define LOCKSTEP_STEP_CONTEXT_SIZE 64u  /* fixed part, v1.0 */
#define LOCKSTEP_MESSAGE_SIZE 48u       /* fixed part, v1.0 */
#define LOCKSTEP_RUNTIME_SENDER UINT64_MAX
#define LOCKSTEP_FLAG_FIRST_STEP 1u     /* step context flags bit 0 */

/* Message kinds. */
enum {
    LOCKSTEP_MSG_DIRECT = 0,
    LOCKSTEP_MSG_TOPIC = 1,
    LOCKSTEP_MSG_CHANNEL = 2,
    LOCKSTEP_MSG_INFER_RESULT = 3, /* payload: tensor; seq = request id */
    LOCKSTEP_MSG_INFER_ERROR = 4,  /* payload: UTF-8; seq = request id */
    LOCKSTEP_MSG_NOTICE = 5        /* payload: UTF-8 */
};

/* Import return values: 0 (or a positive id) accepted, negative refused. */
enum {
    LOCKSTEP_OK = 0,
    LOCKSTEP_ERR_INVALID = -1,
    LOCKSTEP_ERR_QUOTA = -2,
    LOCKSTEP_ERR_TOO_LARGE = -3,
    LOCKSTEP_ERR_UNKNOWN_TARGET = -4
};

/* Log levels. */
enum {
    LOCKSTEP_LOG_ERROR = 0,
    LOCKSTEP_LOG_WARN = 1,
    LOCKSTEP_LOG_INFO = 2,
    LOCKSTEP_LOG_DEBUG = 3,
    LOCKSTEP_LOG_TRACE = 4
};

/* Tensor element types. */
enum {
    LOCKSTEP_DTYPE_F32 = 1,
    LOCKSTEP_DTYPE_I64 = 2,
    LOCKSTEP_DTYPE_I32 = 3,
    LOCKSTEP_DTYPE_U8 = 4,
    LOCKSTEP_DTYPE_F64 = 5
};
#define LOCKSTEP_TENSOR_MAX_RANK 8

/* ---- layouts -------------------------------------------------------------- */

/* Step context, at the pointer passed to agent_step (8-byte aligned). */
typedef struct lockstep_step_context {
    uint32_t size;        /* 0: size of the fixed part (64 in v1.0; may grow) */
    uint32_t abi_version; /* 4: ABI version the host speaks */
    uint64_t tick;        /* 8 */
    uint64_t agent_id;    /* 16 */
    uint64_t task_id;     /* 24: 0 for a plain (round-robin) step */
    int32_t task_priority; /* 32: 0 when no task */
    uint32_t payload_len; /* 36: task payload bytes, at offset `size` */
    uint32_t mailbox_len; /* 40: messages delivered this tick */
    uint32_t flags;       /* 44: LOCKSTEP_FLAG_* */
    uint8_t reserved[16]; /* 48 */
} lockstep_step_context;

_Static_assert(offsetof(lockstep_step_context, size) == 0, "size");
_Static_assert(offsetof(lockstep_step_context, abi_version) == 4, "abi_version");
_Static_assert(offsetof(lockstep_step_context, tick) == 8, "tick");
_Static_assert(offsetof(lockstep_step_context, agent_id) == 16, "agent_id");
_Static_assert(offsetof(lockstep_step_context, task_id) == 24, "task_id");
_Static_assert(offsetof(lockstep_step_context, task_priority) == 32, "task_priority");
_Static_assert(offsetof(lockstep_step_context, payload_len) == 36, "payload_len");
_Static_assert(offsetof(lockstep_step_context, mailbox_len) == 40, "mailbox_len");
_Static_assert(offsetof(lockstep_step_context, flags) == 44, "flags");
_Static_assert(offsetof(lockstep_step_context, reserved) == 48, "reserved");
_Static_assert(sizeof(lockstep_step_context) == LOCKSTEP_STEP_CONTEXT_SIZE, "context size");

/* Message, at the pointer passed to agent_receive (8-byte aligned). */
typedef struct lockstep_message {
    uint32_t size;        /* 0: size of the fixed part (48 in v1.0; may grow) */
    uint32_t kind;        /* 4: LOCKSTEP_MSG_* */
    uint64_t sender;      /* 8: LOCKSTEP_RUNTIME_SENDER for the runtime */
    uint64_t sent_tick;   /* 16 */
    uint64_t seq;         /* 24: sender's output sequence / request id */
    uint32_t topic_len;   /* 32: topic or channel name, at offset `size` */
    uint32_t payload_len; /* 36: payload, at offset `size + topic_len` */
    uint8_t reserved[8];  /* 40 */
} lockstep_message;

_Static_assert(offsetof(lockstep_message, size) == 0, "size");
_Static_assert(offsetof(lockstep_message, kind) == 4, "kind");
_Static_assert(offsetof(lockstep_message, sender) == 8, "sender");
_Static_assert(offsetof(lockstep_message, sent_tick) == 16, "sent_tick");
_Static_assert(offsetof(lockstep_message, seq) == 24, "seq");
_Static_assert(offsetof(lockstep_message, topic_len) == 32, "topic_len");
_Static_assert(offsetof(lockstep_message, payload_len) == 36, "payload_len");
_Static_assert(offsetof(lockstep_message, reserved) == 40, "reserved");
_Static_assert(sizeof(lockstep_message) == LOCKSTEP_MESSAGE_SIZE, "message size");

/* Tensor header; followed by `rank` uint64_t dimensions, then the elements. */
typedef struct lockstep_tensor_header {
    uint8_t dtype;       /* 0: LOCKSTEP_DTYPE_* */
    uint8_t rank;        /* 1: 0..8 */
    uint8_t reserved[6]; /* 2 */
} lockstep_tensor_header;

_Static_assert(offsetof(lockstep_tensor_header, dtype) == 0, "dtype");
_Static_assert(offsetof(lockstep_tensor_header, rank) == 1, "rank");
_Static_assert(sizeof(lockstep_tensor_header) == 8, "tensor header size");

/* Variable parts follow the fixed part, whose length is `size` (not the v1.0
 * constant: newer minors may grow it). */
static inline const uint8_t *lockstep_ctx_payload(const lockstep_step_context *ctx) {
    return (const uint8_t *)ctx + ctx->size;
}
static inline const uint8_t *lockstep_msg_topic(const lockstep_message *msg) {
    return (const uint8_t *)msg + msg->size;
}
static inline const uint8_t *lockstep_msg_payload(const lockstep_message *msg) {
    return (const uint8_t *)msg + msg->size + msg->topic_len;
}
/* Non-zero if the layout is one this header understands. */
static inline int lockstep_ctx_valid(const lockstep_step_context *ctx) {
    return ctx && ctx->size >= LOCKSTEP_STEP_CONTEXT_SIZE &&
           LOCKSTEP_ABI_MAJOR(ctx->abi_version) == LOCKSTEP_ABI_MAJOR(LOCKSTEP_ABI_VERSION);
}
static inline int lockstep_msg_valid(const lockstep_message *msg) {
    return msg && msg->size >= LOCKSTEP_MESSAGE_SIZE;
}

/* ---- imports (module "lockstep") ------------------------------------------ */

#define LOCKSTEP_IMPORT(name) __attribute__((import_module("lockstep"), import_name(#name)))

LOCKSTEP_IMPORT(send)
int32_t lockstep_send(uint64_t to, const void *ptr, uint32_t len);
LOCKSTEP_IMPORT(publish)
int32_t lockstep_publish(const char *topic, uint32_t topic_len, const void *ptr, uint32_t len);
LOCKSTEP_IMPORT(subscribe)
int32_t lockstep_subscribe(const char *topic, uint32_t topic_len);
LOCKSTEP_IMPORT(unsubscribe)
int32_t lockstep_unsubscribe(const char *topic, uint32_t topic_len);
LOCKSTEP_IMPORT(join_channel)
int32_t lockstep_join_channel(const char *name, uint32_t name_len);
LOCKSTEP_IMPORT(leave_channel)
int32_t lockstep_leave_channel(const char *name, uint32_t name_len);
LOCKSTEP_IMPORT(channel_send)
int32_t lockstep_channel_send(const char *name, uint32_t name_len, const void *ptr, uint32_t len);
/* deps: deps_len task ids (uint64_t each).  Returns the task id (> 0). */
LOCKSTEP_IMPORT(schedule_task)
int64_t lockstep_schedule_task(uint64_t agent, int32_t priority, const void *ptr, uint32_t len,
                               const uint64_t *deps, uint32_t deps_len);
/* model: "id" or "id@version"; input: an encoded tensor.  Returns the request id. */
LOCKSTEP_IMPORT(infer)
int64_t lockstep_infer(const char *model, uint32_t model_len, const void *input, uint32_t input_len);
LOCKSTEP_IMPORT(log)
int32_t lockstep_log(int32_t level, const char *ptr, uint32_t len);
LOCKSTEP_IMPORT(random)
uint64_t lockstep_random(void);
LOCKSTEP_IMPORT(tick)
uint64_t lockstep_tick(void);
LOCKSTEP_IMPORT(agent_id)
uint64_t lockstep_agent_id(void);

/* ---- helpers -------------------------------------------------------------- */

/* Marks a function as the wasm export `name`. */
#define LOCKSTEP_EXPORT(name) __attribute__((export_name(#name), visibility("default")))

/* "literal" -> "literal", its length: lockstep_subscribe(LOCKSTEP_LIT("sensors")). */
#define LOCKSTEP_LIT(s) ("" s), ((uint32_t)sizeof(s) - 1u)

/* Logs a string literal. */
#define LOCKSTEP_LOG_LIT(level, s) lockstep_log((level), LOCKSTEP_LIT(s))

/* Defines the agent_abi_version export. */
#define LOCKSTEP_DEFINE_ABI_VERSION()                                  \
    LOCKSTEP_EXPORT(agent_abi_version) int32_t agent_abi_version(void) { \
        return LOCKSTEP_ABI_VERSION;                                   \
    }

/* Defines the agent_buffer export over a static, 8-byte aligned buffer of
 * `bytes` bytes (returns 0, a fault, for anything larger). */
#define LOCKSTEP_DEFINE_BUFFER(bytes)                                       \
    static uint64_t lockstep_host_buffer_[((bytes) + 7) / 8];               \
    LOCKSTEP_EXPORT(agent_buffer) int32_t agent_buffer(int32_t len) {       \
        if (len < 0 || (uint32_t)len > sizeof(lockstep_host_buffer_)) {     \
            return 0;                                                       \
        }                                                                   \
        return (int32_t)(uintptr_t)lockstep_host_buffer_;                   \
    }

/* A deterministic bump allocator over memory above __heap_base, growing
 * memory as needed; never frees.  Returns NULL when memory cannot grow.
 * State is per translation unit. */
extern unsigned char __heap_base;
static inline void *lockstep_bump_alloc(size_t n) {
    static uintptr_t next, end;
    if (next == 0) {
        next = ((uintptr_t)&__heap_base + 15u) & ~(uintptr_t)15u;
        end = __builtin_wasm_memory_size(0) * 65536u;
    }
    uintptr_t start = next;
    if (n > UINT32_MAX - start - 15u) {
        return NULL;
    }
    uintptr_t stop = (start + n + 15u) & ~(uintptr_t)15u;
    if (stop > end) {
        if (__builtin_wasm_memory_size(0) * 65536u != end) {
            return NULL; /* memory grown behind our back */
        }
        uintptr_t pages = (stop - end + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) {
            return NULL;
        }
        end += pages * 65536u;
    }
    next = stop;
    return (void *)start;
}

/* Appends `s` (NUL-terminated) to buf[*len .. cap); truncates when full. */
static inline void lockstep_append_str(char *buf, uint32_t *len, uint32_t cap, const char *s) {
    while (*s && *len < cap) {
        buf[(*len)++] = *s++;
    }
}

/* Appends the decimal form of `v` to buf[*len .. cap); truncates when full. */
static inline void lockstep_append_u64(char *buf, uint32_t *len, uint32_t cap, uint64_t v) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n && *len < cap) {
        buf[(*len)++] = digits[--n];
    }
}

#ifdef __cplusplus
}
#endif

#endif /* LOCKSTEP_AGENT_H */
