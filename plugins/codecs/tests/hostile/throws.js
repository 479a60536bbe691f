// Hostile: throws on a frame starting with 0xEE, and trips over undefined on 0xEF.
// Other frames decode normally.
function checkFrame(bytes) {
  if (bytes[0] === 0xee) {
    throw new RangeError("frame type 0xee is not supported");
  }
}

function decodeUplink(input) {
  checkFrame(input.bytes);
  if (input.bytes[0] === 0xef) {
    var missing;
    return { data: { value: missing.field } };
  }
  return { data: { first: input.bytes[0] } };
}
