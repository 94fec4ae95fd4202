// cudasim stand-in: everything lives in the force-included cudasim.h.
#include "../cudasim.h"
