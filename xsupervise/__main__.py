from ._cli_fast import console

console()
