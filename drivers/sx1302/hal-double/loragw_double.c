/*
 * berrygw's in-memory double of libloragw (see loragw_hal.h, loragw_double.h).
 *
 * It checks what the real HAL checks at its API (indexes, concentrator
 * started or not, LUT size), records every configuration and every packet to
 * send, hands out scripted received packets, and runs a 1 MHz counter from
 * the monotonic clock. One mutex guards all state: tests script the double
 * while the wrapper's owner thread calls it.
 * SPDX-License-Identifier: Apache-2.0
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "loragw_double.h"

enum {
    FN_BOARD_SETCONF,
    FN_RXRF_SETCONF,
    FN_RXIF_SETCONF,
    FN_DEMOD_SETCONF,
    FN_TXGAIN_SETCONF,
    FN_START,
    FN_STOP,
    FN_RECEIVE,
    FN_SEND,
    FN_STATUS,
    FN_ABORT_TX,
    FN_GET_INSTCNT,
    FN_GET_EUI,
    FN_GET_TEMPERATURE,
    FN_COUNT
};

static const char *const FN_NAMES[FN_COUNT] = {
    "lgw_board_setconf", "lgw_rxrf_setconf", "lgw_rxif_setconf", "lgw_demod_setconf",
    "lgw_txgain_setconf", "lgw_start", "lgw_stop", "lgw_receive", "lgw_send", "lgw_status",
    "lgw_abort_tx", "lgw_get_instcnt", "lgw_get_eui", "lgw_get_temperature",
};

#define RX_QUEUE 256
#define TX_KEPT 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
    bool started;
    uint32_t calls[FN_COUNT];
    uint32_t failures_left[FN_COUNT];

    struct lgw_conf_board_s board;
    bool board_set;
    struct lgw_conf_rxrf_s rxrf[LGW_RF_CHAIN_NB];
    bool rxrf_set[LGW_RF_CHAIN_NB];
    struct lgw_conf_rxif_s rxif[LGW_IF_CHAIN_NB];
    bool rxif_set[LGW_IF_CHAIN_NB];
    struct lgw_conf_demod_s demod;
    bool demod_set;
    struct lgw_tx_gain_lut_s txgain[LGW_RF_CHAIN_NB];
    bool txgain_set[LGW_RF_CHAIN_NB];

    struct lgw_pkt_rx_s rx[RX_QUEUE];
    uint32_t rx_head;
    uint32_t rx_len;

    struct lgw_pkt_tx_s tx[TX_KEPT];
    uint32_t tx_count;

    uint32_t counter_base;   /* counter value at counter_set_us */
    uint64_t counter_set_us; /* monotonic time the base was set */
    bool counter_frozen;

    uint64_t eui;
    float temperature;
    uint8_t tx_status;
} st;

static uint64_t monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint32_t counter_now(void) {
    if (st.counter_frozen) {
        return st.counter_base;
    }
    /* The hardware counter is 32 bits of microseconds: it wraps, and so does this. */
    return st.counter_base + (uint32_t)(monotonic_us() - st.counter_set_us);
}

static void set_counter(uint32_t value) {
    st.counter_base = value;
    st.counter_set_us = monotonic_us();
}

static void reset_locked(void) {
    memset(&st, 0, sizeof st);
    st.eui = 0x0016C001F0000001ull;
    st.temperature = 25.0f;
    st.tx_status = TX_FREE;
    set_counter(0);
}

/* Counts a call; true when an injected failure is due. Caller holds the lock. */
static bool enter(int fn) {
    st.calls[fn]++;
    if (st.failures_left[fn] > 0) {
        st.failures_left[fn]--;
        return true;
    }
    return false;
}

static int fn_index(const char *name) {
    if (name == NULL) {
        return -1;
    }
    for (int i = 0; i < FN_COUNT; i++) {
        if (strcmp(name, FN_NAMES[i]) == 0) {
            return i;
        }
    }
    return -1;
}

#define LOCKED(expr)                 \
    do {                             \
        pthread_mutex_lock(&lock);   \
        expr;                        \
        pthread_mutex_unlock(&lock); \
    } while (0)

/* ---- the HAL API ---- */

int lgw_board_setconf(struct lgw_conf_board_s *conf) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_BOARD_SETCONF) && conf != NULL && !st.started) {
        st.board = *conf;
        st.board_set = true;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_rxrf_setconf(uint8_t rf_chain, struct lgw_conf_rxrf_s *conf) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_RXRF_SETCONF) && conf != NULL && !st.started && rf_chain < LGW_RF_CHAIN_NB) {
        st.rxrf[rf_chain] = *conf;
        st.rxrf_set[rf_chain] = true;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_rxif_setconf(uint8_t if_chain, struct lgw_conf_rxif_s *conf) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_RXIF_SETCONF) && conf != NULL && !st.started && if_chain < LGW_IF_CHAIN_NB &&
        (!conf->enable || conf->rf_chain < LGW_RF_CHAIN_NB)) {
        st.rxif[if_chain] = *conf;
        st.rxif_set[if_chain] = true;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_demod_setconf(struct lgw_conf_demod_s *conf) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_DEMOD_SETCONF) && conf != NULL) {
        st.demod = *conf;
        st.demod_set = true;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_txgain_setconf(uint8_t rf_chain, struct lgw_tx_gain_lut_s *conf) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_TXGAIN_SETCONF) && conf != NULL && rf_chain < LGW_RF_CHAIN_NB && conf->size >= 1 &&
        conf->size <= TX_GAIN_LUT_SIZE_MAX) {
        st.txgain[rf_chain] = *conf;
        st.txgain_set[rf_chain] = true;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_start(void) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_START) && st.board_set) {
        st.started = true;
        /* A started chip counts from zero and is no longer wedged. */
        st.counter_frozen = false;
        set_counter(0);
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_stop(void) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_STOP)) {
        st.started = false;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_receive(uint8_t max_pkt, struct lgw_pkt_rx_s *pkt_data) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_RECEIVE) && pkt_data != NULL && st.started) {
        int n = 0;
        while (n < max_pkt && st.rx_len > 0) {
            pkt_data[n++] = st.rx[st.rx_head];
            st.rx_head = (st.rx_head + 1) % RX_QUEUE;
            st.rx_len--;
        }
        rc = n;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_send(struct lgw_pkt_tx_s *pkt_data) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_SEND) && pkt_data != NULL && st.started && pkt_data->rf_chain < LGW_RF_CHAIN_NB &&
        pkt_data->size <= 255) {
        st.tx[st.tx_count % TX_KEPT] = *pkt_data;
        st.tx_count++;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_status(uint8_t rf_chain, uint8_t select, uint8_t *code) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_STATUS) && code != NULL && rf_chain < LGW_RF_CHAIN_NB) {
        if (select == TX_STATUS) {
            *code = st.started ? st.tx_status : TX_OFF;
            rc = LGW_HAL_SUCCESS;
        } else if (select == RX_STATUS) {
            *code = st.started ? RX_ON : RX_OFF;
            rc = LGW_HAL_SUCCESS;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_abort_tx(uint8_t rf_chain) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_ABORT_TX) && rf_chain < LGW_RF_CHAIN_NB) {
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_get_instcnt(uint32_t *inst_cnt_us) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_GET_INSTCNT) && inst_cnt_us != NULL && st.started) {
        *inst_cnt_us = counter_now();
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_get_eui(uint64_t *eui) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_GET_EUI) && eui != NULL && st.started) {
        *eui = st.eui;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int lgw_get_temperature(float *temperature) {
    int rc = LGW_HAL_ERROR;
    pthread_mutex_lock(&lock);
    if (!enter(FN_GET_TEMPERATURE) && temperature != NULL && st.started) {
        *temperature = st.temperature;
        rc = LGW_HAL_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

const char *lgw_version_info(void) {
    return "berrygw libloragw double (API of sx1302_hal 2.1.0)";
}

/* ---- test controls ---- */

void double_reset(void) {
    LOCKED(reset_locked());
}

int double_push_rx(const struct lgw_pkt_rx_s *pkt) {
    int rc = -1;
    pthread_mutex_lock(&lock);
    if (pkt != NULL && st.rx_len < RX_QUEUE) {
        st.rx[(st.rx_head + st.rx_len) % RX_QUEUE] = *pkt;
        st.rx_len++;
        rc = 0;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

uint32_t double_rx_pending(void) {
    uint32_t n;
    LOCKED(n = st.rx_len);
    return n;
}

uint32_t double_tx_count(void) {
    uint32_t n;
    LOCKED(n = st.tx_count);
    return n;
}

bool double_tx_get(uint32_t index, struct lgw_pkt_tx_s *out) {
    bool found = false;
    pthread_mutex_lock(&lock);
    uint32_t oldest = st.tx_count > TX_KEPT ? st.tx_count - TX_KEPT : 0;
    if (out != NULL && index >= oldest && index < st.tx_count) {
        *out = st.tx[index % TX_KEPT];
        found = true;
    }
    pthread_mutex_unlock(&lock);
    return found;
}

int double_fail_next(const char *function, uint32_t count) {
    int fn = fn_index(function);
    if (fn < 0) {
        return -1;
    }
    LOCKED(st.failures_left[fn] = count);
    return 0;
}

int64_t double_call_count(const char *function) {
    int fn = fn_index(function);
    if (fn < 0) {
        return -1;
    }
    int64_t n;
    LOCKED(n = st.calls[fn]);
    return n;
}

bool double_board_conf(struct lgw_conf_board_s *out) {
    bool set;
    pthread_mutex_lock(&lock);
    set = st.board_set;
    if (set && out != NULL) {
        *out = st.board;
    }
    pthread_mutex_unlock(&lock);
    return set;
}

bool double_rxrf_conf(uint8_t rf_chain, struct lgw_conf_rxrf_s *out) {
    bool set = false;
    pthread_mutex_lock(&lock);
    if (rf_chain < LGW_RF_CHAIN_NB && st.rxrf_set[rf_chain]) {
        set = true;
        if (out != NULL) {
            *out = st.rxrf[rf_chain];
        }
    }
    pthread_mutex_unlock(&lock);
    return set;
}

bool double_rxif_conf(uint8_t if_chain, struct lgw_conf_rxif_s *out) {
    bool set = false;
    pthread_mutex_lock(&lock);
    if (if_chain < LGW_IF_CHAIN_NB && st.rxif_set[if_chain]) {
        set = true;
        if (out != NULL) {
            *out = st.rxif[if_chain];
        }
    }
    pthread_mutex_unlock(&lock);
    return set;
}

bool double_demod_conf(struct lgw_conf_demod_s *out) {
    bool set;
    pthread_mutex_lock(&lock);
    set = st.demod_set;
    if (set && out != NULL) {
        *out = st.demod;
    }
    pthread_mutex_unlock(&lock);
    return set;
}

bool double_txgain_conf(uint8_t rf_chain, struct lgw_tx_gain_lut_s *out) {
    bool set = false;
    pthread_mutex_lock(&lock);
    if (rf_chain < LGW_RF_CHAIN_NB && st.txgain_set[rf_chain]) {
        set = true;
        if (out != NULL) {
            *out = st.txgain[rf_chain];
        }
    }
    pthread_mutex_unlock(&lock);
    return set;
}

void double_set_instcnt(uint32_t value) {
    LOCKED(set_counter(value));
}

void double_freeze_instcnt(bool frozen) {
    pthread_mutex_lock(&lock);
    if (frozen != st.counter_frozen) {
        /* Keep the value the counter has now, frozen or running from here. */
        set_counter(counter_now());
        st.counter_frozen = frozen;
    }
    pthread_mutex_unlock(&lock);
}

uint32_t double_peek_instcnt(void) {
    uint32_t v;
    LOCKED(v = counter_now());
    return v;
}

void double_set_eui(uint64_t eui) {
    LOCKED(st.eui = eui);
}

void double_set_temperature(float celsius) {
    LOCKED(st.temperature = celsius);
}

void double_set_tx_status(uint8_t code) {
    LOCKED(st.tx_status = code);
}

bool double_is_started(void) {
    bool started;
    LOCKED(started = st.started);
    return started;
}

/* The state a freshly loaded library has, before any double_reset(). */
__attribute__((constructor)) static void double_init(void) {
    reset_locked();
}
