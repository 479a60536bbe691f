/*
 * berrygw test double of libloragw's public API (sx1302_hal V2.1.0).
 *
 * Written for berrygw from the documented interface of the HAL: the functions,
 * structures, fields and constants below carry the same names, types and
 * values as the HAL's public header, so that berrygw's Rust wrapper (whose
 * bindings bindgen generates from whichever header is built) compiles and
 * behaves the same against this double and against the real library.
 * Only the part of the API berrygw uses is declared.
 *
 * The double keeps its state in memory; loragw_double.h scripts it.
 * SPDX-License-Identifier: Apache-2.0
 */
#ifndef BERRYGW_LORAGW_HAL_DOUBLE_H
#define BERRYGW_LORAGW_HAL_DOUBLE_H

#include <stdbool.h>
#include <stdint.h>

/* Return codes. */
#define LGW_HAL_SUCCESS 0
#define LGW_HAL_ERROR -1

/* Chip geometry. */
#define LGW_RF_CHAIN_NB 2  /* radios (RF chains) */
#define LGW_IF_CHAIN_NB 10 /* 8 multi-SF LoRa, 1 LoRa service, 1 FSK */
#define LGW_MULTI_NB 8
#define TX_GAIN_LUT_SIZE_MAX 16

/* Modulations. */
#define MOD_UNDEFINED 0
#define MOD_CW 0x08
#define MOD_LORA 0x10
#define MOD_FSK 0x20

/* Bandwidths (LoRa and FSK). */
#define BW_UNDEFINED 0
#define BW_500KHZ 0x06
#define BW_250KHZ 0x05
#define BW_125KHZ 0x04

/* Data rates: the spreading factor for LoRa, the bit rate for FSK. */
#define DR_UNDEFINED 0
#define DR_LORA_SF5 5
#define DR_LORA_SF6 6
#define DR_LORA_SF7 7
#define DR_LORA_SF8 8
#define DR_LORA_SF9 9
#define DR_LORA_SF10 10
#define DR_LORA_SF11 11
#define DR_LORA_SF12 12
#define DR_FSK_MIN 500
#define DR_FSK_MAX 250000

/* LoRa coding rates. */
#define CR_UNDEFINED 0
#define CR_LORA_4_5 0x01
#define CR_LORA_4_6 0x02
#define CR_LORA_4_7 0x03
#define CR_LORA_4_8 0x04

/* CRC status of a received packet. */
#define STAT_UNDEFINED 0x00
#define STAT_NO_CRC 0x01
#define STAT_CRC_BAD 0x11
#define STAT_CRC_OK 0x10

/* When lgw_send transmits. */
#define IMMEDIATE 0
#define TIMESTAMPED 1
#define ON_GPS 2

/* lgw_status: what to ask, and the TX answers. */
#define TX_STATUS 1
#define RX_STATUS 2
#define TX_STATUS_UNKNOWN 0
#define TX_OFF 1
#define TX_FREE 2
#define TX_SCHEDULED 3
#define TX_EMITTING 4
#define RX_STATUS_UNKNOWN 0
#define RX_OFF 1
#define RX_ON 2
#define RX_SUSPENDED 3

/* How the host reaches the SX1302. */
typedef enum com_type_e {
    LGW_COM_SPI,
    LGW_COM_USB,
    LGW_COM_UNKNOWN
} lgw_com_type_t;

/* The radio behind an RF chain. */
typedef enum {
    LGW_RADIO_TYPE_NONE,
    LGW_RADIO_TYPE_SX1255,
    LGW_RADIO_TYPE_SX1257,
    LGW_RADIO_TYPE_SX1272,
    LGW_RADIO_TYPE_SX1276,
    LGW_RADIO_TYPE_SX1250
} lgw_radio_type_t;

/* Board-wide settings. */
struct lgw_conf_board_s {
    bool lorawan_public;    /* LoRaWAN public sync word */
    uint8_t clksrc;         /* RF chain that clocks the concentrator */
    bool full_duplex;
    lgw_com_type_t com_type;
    char com_path[64];      /* spidev (or tty for USB) path */
};

/* RSSI temperature compensation polynomial. */
struct lgw_rssi_tcomp_s {
    float coeff_a;
    float coeff_b;
    float coeff_c;
    float coeff_d;
    float coeff_e;
};

/* One RF chain (radio). */
struct lgw_conf_rxrf_s {
    bool enable;
    uint32_t freq_hz;       /* centre frequency */
    float rssi_offset;
    struct lgw_rssi_tcomp_s rssi_tcomp;
    lgw_radio_type_t type;
    bool tx_enable;
    bool single_input_mode; /* SX1250 only */
};

/* One IF chain (channel) and its modem. */
struct lgw_conf_rxif_s {
    bool enable;
    uint8_t rf_chain;
    int32_t freq_hz;        /* offset from the RF chain centre */
    uint8_t bandwidth;
    uint32_t datarate;
    uint8_t sync_word_size; /* FSK */
    uint64_t sync_word;     /* FSK */
    bool implicit_hdr;      /* LoRa service channel */
    uint8_t implicit_payload_length;
    bool implicit_crc_en;
    uint8_t implicit_coderate;
};

/* LoRa demodulators. */
struct lgw_conf_demod_s {
    uint8_t multisf_datarate; /* bit n enables SF(n+5) on the multi-SF channels */
};

/* A received packet. */
struct lgw_pkt_rx_s {
    uint32_t freq_hz;
    int32_t freq_offset;
    uint8_t if_chain;
    uint8_t status;         /* STAT_* */
    uint32_t count_us;      /* concentrator counter at reception */
    uint8_t rf_chain;
    uint8_t modem_id;
    uint8_t modulation;     /* MOD_* */
    uint8_t bandwidth;      /* BW_* */
    uint32_t datarate;      /* DR_* */
    uint8_t coderate;       /* CR_* */
    float rssic;            /* channel RSSI, dBm */
    float rssis;            /* signal RSSI, dBm */
    float snr;
    float snr_min;
    float snr_max;
    uint16_t crc;
    uint16_t size;
    uint8_t payload[256];
    bool ftime_received;
    uint32_t ftime;
};

/* A packet to transmit. */
struct lgw_pkt_tx_s {
    uint32_t freq_hz;
    uint8_t tx_mode;        /* IMMEDIATE, TIMESTAMPED, ON_GPS */
    uint32_t count_us;      /* counter value to transmit at (TIMESTAMPED) */
    uint8_t rf_chain;
    int8_t rf_power;        /* dBm at the connector */
    uint8_t modulation;
    int8_t freq_offset;     /* CW only */
    uint8_t bandwidth;
    uint32_t datarate;
    uint8_t coderate;
    bool invert_pol;
    uint8_t f_dev;          /* FSK deviation, kHz */
    uint16_t preamble;
    bool no_crc;
    bool no_header;
    uint16_t size;
    uint8_t payload[256];
};

/* One TX power step. */
struct lgw_tx_gain_s {
    int8_t rf_power;
    uint8_t dig_gain;
    uint8_t pa_gain;
    uint8_t dac_gain;
    uint8_t mix_gain;
    int8_t offset_i;
    int8_t offset_q;
    uint8_t pwr_idx;        /* SX1250 power index */
};

/* The TX power table of one RF chain. */
struct lgw_tx_gain_lut_s {
    struct lgw_tx_gain_s lut[TX_GAIN_LUT_SIZE_MAX];
    uint8_t size;
};

int lgw_board_setconf(struct lgw_conf_board_s *conf);
int lgw_rxrf_setconf(uint8_t rf_chain, struct lgw_conf_rxrf_s *conf);
int lgw_rxif_setconf(uint8_t if_chain, struct lgw_conf_rxif_s *conf);
int lgw_demod_setconf(struct lgw_conf_demod_s *conf);
int lgw_txgain_setconf(uint8_t rf_chain, struct lgw_tx_gain_lut_s *conf);
int lgw_start(void);
int lgw_stop(void);
int lgw_receive(uint8_t max_pkt, struct lgw_pkt_rx_s *pkt_data);
int lgw_send(struct lgw_pkt_tx_s *pkt_data);
int lgw_status(uint8_t rf_chain, uint8_t select, uint8_t *code);
int lgw_abort_tx(uint8_t rf_chain);
int lgw_get_instcnt(uint32_t *inst_cnt_us);
int lgw_get_eui(uint64_t *eui);
int lgw_get_temperature(float *temperature);
const char *lgw_version_info(void);

#endif
