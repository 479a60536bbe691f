// Hostile: on a frame starting with 0xEE it hoards memory until the engine refuses.
// Other frames decode normally.
var hoard = [];

function decodeUplink(input) {
  if (input.bytes[0] === 0xee) {
    for (;;) {
      hoard.push(new Array(4096).fill(input.bytes.length));
    }
  }
  if (input.bytes[0] === 0xef) {
    var text = "berrygw";
    for (;;) {
      text = text + text;
    }
  }
  return { data: { first: input.bytes[0] } };
}
