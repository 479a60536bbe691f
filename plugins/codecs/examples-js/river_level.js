// River level sensor, TTN v3 (Device Repository) contract, modern syntax.
// Payload, 6 bytes big-endian: i16 level (cm), i16 water temperature (0.1 °C),
// u16 battery (mV).

const RIVER_LEVEL_LENGTH = 6;

const decodeUplink = ({ bytes, fPort, recvTime }) => {
  if (bytes.length !== RIVER_LEVEL_LENGTH) {
    return {
      errors: [`river level payload must be ${RIVER_LEVEL_LENGTH} bytes, got ${bytes.length} on port ${fPort}`],
    };
  }
  const view = new DataView(Uint8Array.from(bytes).buffer);
  const [level_cm, water_temp_c, battery_v] = [
    view.getInt16(0),
    view.getInt16(2) / 10,
    view.getUint16(4) / 1000,
  ];
  const warnings = [];
  if (level_cm < 0) {
    warnings.push(`level below the sensor zero at ${recvTime.toISOString()}`);
  }
  return { data: { level_cm, water_temp_c, battery_v }, warnings };
};
