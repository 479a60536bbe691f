"""pymodbus (an implementation outside berrygw) as a client of our needle dam simulator.

Usage: client_reads_sim.py PORT. Prints one JSON object of what it read and wrote.
"""
import json
import struct
import sys

from pymodbus.client import ModbusTcpClient

client = ModbusTcpClient("127.0.0.1", port=int(sys.argv[1]), timeout=5)
if not client.connect():
    sys.exit("cannot connect to the simulator")
out = {}
out["positions"] = client.read_input_registers(0, 4, slave=1).registers
hi_lo = client.read_input_registers(10, 2, slave=1).registers
out["upstream_level"] = struct.unpack(">f", struct.pack(">HH", *hi_lo))[0]
out["selector"] = client.read_input_registers(20, 1, slave=1).registers[0]
out["discrete"] = client.read_discrete_inputs(0, 9, slave=1).bits[:9]
out["write_register_error"] = client.write_register(1, 600, slave=1).isError()
out["write_registers_error"] = client.write_registers(2, [450, 550], slave=1).isError()
out["targets"] = client.read_holding_registers(0, 4, slave=1).registers
out["write_coil_error"] = client.write_coil(3, True, slave=1).isError()
out["coils"] = client.read_coils(0, 4, slave=1).bits[:4]
bad = client.read_input_registers(500, 2, slave=1)
out["bad_address_exception"] = getattr(bad, "exception_code", None)
client.close()
print(json.dumps(out))
