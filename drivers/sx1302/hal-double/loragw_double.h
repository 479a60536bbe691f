/*
 * Test controls of berrygw's libloragw double (see loragw_hal.h): script
 * received packets, read back what the wrapper configured and sent, make the
 * next calls of a HAL function fail, and set the counter, EUI and temperature.
 * All functions are thread-safe: tests call them while the wrapper's owner
 * thread calls the lgw_* functions.
 * SPDX-License-Identifier: Apache-2.0
 */
#ifndef BERRYGW_LORAGW_DOUBLE_H
#define BERRYGW_LORAGW_DOUBLE_H

#include <stdbool.h>
#include <stdint.h>

#include "loragw_hal.h"

/* Back to the state of a freshly loaded library: stopped, nothing configured,
 * no scripted packets, nothing recorded, no injected failure. */
void double_reset(void);

/* Queues a packet for lgw_receive. Returns 0, or -1 when the queue (256) is full. */
int double_push_rx(const struct lgw_pkt_rx_s *pkt);
/* Packets queued and not yet received. */
uint32_t double_rx_pending(void);

/* Number of packets lgw_send accepted since the last reset. */
uint32_t double_tx_count(void);
/* Copies the index-th accepted packet (oldest first, the last 64 kept). */
bool double_tx_get(uint32_t index, struct lgw_pkt_tx_s *out);

/* The next `count` calls of the named lgw_* function fail with LGW_HAL_ERROR.
 * Returns 0, or -1 for a name the double does not know. */
int double_fail_next(const char *function, uint32_t count);
/* Calls of the named lgw_* function since the last reset, -1 for an unknown name. */
int64_t double_call_count(const char *function);

/* The configuration last accepted by each setconf; false when never set. */
bool double_board_conf(struct lgw_conf_board_s *out);
bool double_rxrf_conf(uint8_t rf_chain, struct lgw_conf_rxrf_s *out);
bool double_rxif_conf(uint8_t if_chain, struct lgw_conf_rxif_s *out);
bool double_demod_conf(struct lgw_conf_demod_s *out);
bool double_txgain_conf(uint8_t rf_chain, struct lgw_tx_gain_lut_s *out);

/* The counter runs at 1 MHz from lgw_start (which resets it to 0). */
void double_set_instcnt(uint32_t value);
/* A frozen counter keeps its value: a wedged concentrator. lgw_start unfreezes it. */
void double_freeze_instcnt(bool frozen);
/* The counter now, without counting a call or consuming an injected failure. */
uint32_t double_peek_instcnt(void);

void double_set_eui(uint64_t eui);
void double_set_temperature(float celsius);
/* What lgw_status(TX_STATUS) answers (TX_FREE by default). */
void double_set_tx_status(uint8_t code);
/* Whether lgw_start succeeded and lgw_stop was not called since. */
bool double_is_started(void);

#endif
