// Water meter, TTN v3 (Device Repository) contract, ES5 style.
// Payload, 7 bytes big-endian: u32 index (litres), u16 battery (mV), u8 flags
// (bit 0: leak suspected, bit 1: low battery).

var WATER_METER_LENGTH = 7;

function readUint32(bytes, at) {
  // Multiply instead of shifting: << would turn the top bit into a sign.
  return bytes[at] * 16777216 + ((bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]);
}

function readUint16(bytes, at) {
  return (bytes[at] << 8) | bytes[at + 1];
}

function decodeUplink(input) {
  var bytes = input.bytes;
  if (bytes.length !== WATER_METER_LENGTH) {
    return {
      errors: ["water meter payload must be " + WATER_METER_LENGTH + " bytes, got " + bytes.length]
    };
  }
  var flags = bytes[6];
  var data = {
    index_l: readUint32(bytes, 0),
    battery_v: readUint16(bytes, 4) / 1000,
    leak: (flags & 0x01) !== 0,
    low_battery: (flags & 0x02) !== 0
  };
  var warnings = [];
  if (data.low_battery) {
    warnings.push("battery low (" + data.battery_v + " V): plan a replacement");
  }
  return { data: data, warnings: warnings };
}
