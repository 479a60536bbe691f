// Waste container fill sensor, ChirpStack v4 contract with device variables.
// Payload, 4 bytes big-endian: u8 fill (%), i8 temperature (°C), u16 battery (mV).
// Device variable `full_threshold` (percent, default "80") sets when `full` is true.

var DEFAULT_FULL_THRESHOLD = 80;

function fullThreshold(variables, warnings) {
  var raw = variables ? variables.full_threshold : undefined;
  if (raw === undefined || raw === "") {
    return DEFAULT_FULL_THRESHOLD;
  }
  var threshold = Number(raw);
  if (!(threshold >= 0 && threshold <= 100)) {
    warnings.push("variable full_threshold=" + raw + " is not a percentage, using " + DEFAULT_FULL_THRESHOLD);
    return DEFAULT_FULL_THRESHOLD;
  }
  return threshold;
}

function decodeUplink(input) {
  var bytes = input.bytes;
  if (bytes.length < 4) {
    return { errors: ["waste fill payload must be 4 bytes, got " + bytes.length] };
  }
  var warnings = [];
  var threshold = fullThreshold(input.variables, warnings);
  if (bytes.length > 4) {
    warnings.push("ignoring " + (bytes.length - 4) + " trailing bytes");
  }
  var fill = bytes[0];
  if (fill > 100) {
    return { errors: ["fill level " + fill + " % is out of range"] };
  }
  var temperature = bytes[1] > 127 ? bytes[1] - 256 : bytes[1];
  return {
    data: {
      fill_pct: fill,
      temperature_c: temperature,
      battery_v: ((bytes[2] << 8) | bytes[3]) / 1000,
      full: fill >= threshold
    },
    warnings: warnings
  };
}
