/* The header bindgen reads for berrygw-sx1302: libloragw's public API, from
 * Semtech's tree (feature `sx1302`) or from berrygw's test double
 * (feature `hal-double`, which also brings the double's control functions). */
#include "loragw_hal.h"
#ifdef BERRYGW_HAL_DOUBLE
#include "loragw_double.h"
#endif
