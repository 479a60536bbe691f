// Public-lighting cabinet, ChirpStack v3 legacy contract: Decode(fPort, bytes, variables)
// returns the data object itself and reports problems by throwing.
// Payload, 8 bytes big-endian: u8 circuits on (bit n = circuit n+1), u8 mode,
// u32 energy (Wh), u16 mains voltage (0.1 V).

var MODES = ["astronomical_clock", "forced_on", "forced_off", "maintenance"];

function Decode(fPort, bytes, variables) {
  if (bytes.length !== 8) {
    throw new Error("lighting cabinet payload must be 8 bytes, got " + bytes.length);
  }
  var circuits = {};
  for (var n = 0; n < 4; n++) {
    circuits["circuit_" + (n + 1)] = (bytes[0] & (1 << n)) !== 0;
  }
  var mode = MODES[bytes[1]];
  if (mode === undefined) {
    throw new Error("unknown cabinet mode " + bytes[1]);
  }
  return {
    circuits: circuits,
    mode: mode,
    energy_wh: bytes[2] * 16777216 + ((bytes[3] << 16) | (bytes[4] << 8) | bytes[5]),
    mains_v: ((bytes[6] << 8) | bytes[7]) / 10
  };
}
