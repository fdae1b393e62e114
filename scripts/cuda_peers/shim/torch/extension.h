// Stand-in for <torch/extension.h> (see python.h beside it): the ATen API without Python headers.
#pragma once
#include <torch/python.h>
