"""The platform a VM runs on: host facts, capabilities, firmware, vTPM, memory encryption."""
