// Hostile: on a frame starting with 0xEE it never returns, even trying to swallow the
// interruption with try/catch. Other frames decode normally.
function decodeUplink(input) {
  if (input.bytes[0] === 0xee) {
    for (;;) {
      try {
        while (true) {}
      } catch (e) {
        // an interrupted codec must not be able to carry on
      }
    }
  }
  return { data: { first: input.bytes[0] } };
}
