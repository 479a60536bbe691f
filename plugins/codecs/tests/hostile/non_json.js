// Hostile: on a frame starting with 0xEE, fPort picks something that is not JSON data.
// Other frames decode normally.
function decodeUplink(input) {
  if (input.bytes[0] !== 0xee) {
    return { data: { first: input.bytes[0] } };
  }
  switch (input.fPort) {
    case 1:
      return { data: function () { return 1; } };
    case 2: {
      var loop = { name: "loop" };
      loop.self = loop;
      return { data: loop };
    }
    case 3:
      return undefined;
    case 4:
      return { data: { big: 12345678901234567890n } };
    case 5:
      return "data";
    default:
      return { data: { self: { toJSON: function () { while (true) {} } } } };
  }
}
