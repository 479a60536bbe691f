"""pymodbus (an implementation outside berrygw) as a Modbus TCP server for our client.

Serves unit id 3 with fixed values of every type and word order (see pymodbus.rs), prints
the port it listens on, then serves until killed.
"""
import asyncio
import struct

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server.async_io import ModbusTcpServer


def words(fmt, value):
    return list(struct.unpack(">HH", struct.pack(fmt, value)))


ir = [0] * 16
ir[0] = -125 & 0xFFFF                       # temperature, i16, scale 0.1: -12.5
ir[2:4] = words(">f", 231.5)                # voltage, f32, high word first
ir[4:6] = list(reversed(words(">I", 123456789)))  # counter, u32, LOW word first
ir[6:8] = words(">i", -70000)               # balance, i32, high word first
ir[8] = 1                                   # state enum: 1 = "run"
hr = [0] * 16
hr[0] = 215                                 # setpoint, u16, scale 0.1: 21.5
co = [False] * 8
di = [False] * 8
di[2] = True                                # alarm

store = ModbusSlaveContext(
    di=ModbusSequentialDataBlock(0, di),
    co=ModbusSequentialDataBlock(0, co),
    hr=ModbusSequentialDataBlock(0, hr),
    ir=ModbusSequentialDataBlock(0, ir),
    zero_mode=True,
)
context = ModbusServerContext(slaves={3: store}, single=False)


async def main():
    server = ModbusTcpServer(context, address=("127.0.0.1", 0))
    task = asyncio.create_task(server.serve_forever())
    await server.serving
    print(server.server.sockets[0].getsockname()[1], flush=True)
    await task


asyncio.run(main())
