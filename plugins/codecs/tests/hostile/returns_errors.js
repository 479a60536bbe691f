// Hostile only in the polite way: on a frame starting with 0xEE it reports that decoding
// failed, the way TTN codecs do, with partial data and non-string entries.
function decodeUplink(input) {
  if (input.bytes[0] === 0xee) {
    return {
      data: { partial: true },
      warnings: ["this one is kept out"],
      errors: ["unknown frame type 0xee", 42]
    };
  }
  return { data: { first: input.bytes[0] } };
}
