/* The proxy's hot path in C: optional, with the same behaviour in Python.
 *
 * ScopedSession's forwarding members find the caller's session and hand it the
 * call. Written in Python, each costs a Python call of its own on top of the
 * session's method (for __call__, CPython's slot_tp_call and an empty keyword
 * dict as well). Here the same lookup runs in C:
 *
 *   ProxyBase         the base of ScopedSession: holds the scope's slot (or a
 *                     scopefunc and its dict of cells) in C fields, and is
 *                     callable: Session() returns the caller's session.
 *   Forward           a method-like descriptor: Session.add(...) calls the
 *                     caller's session's add(...) with the arguments exactly
 *                     as given, making no bound method; Session.add (not called)
 *                     is the session's own bound method.
 *   SettableForward   the same for attributes that can be set through the proxy
 *                     (bind, autoflush, identity_map).
 *   ThreadSlot        the thread scope's slot: slot.cell is the calling thread's
 *                     cell, read with one dictionary lookup.
 *
 * Everything but "the caller already has a session" goes to the Python method
 * _create(kw), which is where sessions are made, checked and recorded: this
 * file never makes or registers a session itself. Close() and the other calls
 * without arguments stay Python methods: CPython runs a Python method's call of
 * the session's method without entering the interpreter again, which a C
 * member cannot do, and that costs more than the lookup saves.
 *
 * scoped_session/_proxy.py uses this module when it can be imported and the
 * environment variable SCOPED_SESSION_PURE_PYTHON is unset or empty; the test
 * suite runs in both modes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static PyObject *str_cell;     /* "cell" */
static PyObject *str_session;  /* "session" */
static PyObject *str_create;   /* "_create" */

/* -- ProxyBase ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    /* The scope's slot: slot.cell is the caller's cell (thread and context scopes). */
    PyObject *slot;
    /* Under a scopefunc: the scope's dict of key -> cell, and the scopefunc.
       keyed_func is NULL or None for every other scope. */
    PyObject *keyed_cells;
    PyObject *keyed_func;
} ProxyObject;

static PyTypeObject ProxyType;

/* Call self._create(kw), the slow path, with a dict of its own. */
static PyObject *
proxy_create(ProxyObject *self, PyObject *kw)
{
    PyObject *copy = kw != NULL ? PyDict_Copy(kw) : PyDict_New();
    if (copy == NULL) {
        return NULL;
    }
    PyObject *session = PyObject_CallMethodOneArg((PyObject *)self, str_create, copy);
    Py_DECREF(copy);
    return session;
}

/* The caller's session, made through _create() when it has none: a new
 * reference, or NULL with an exception set. Mirrors the Python lookups in
 * _proxy.py: self._slot.cell.session, or under a scopefunc
 * self._keyed_cells.get(self._keyed_func()).session, where a missing attribute
 * (and under a scopefunc a TypeError, an unhashable key) means "no session yet"
 * and leaves the rest to _create(). */
static PyObject *
caller_session(ProxyObject *self)
{
    PyObject *cell, *session;
    int keyed = self->keyed_func != NULL && self->keyed_func != Py_None;

    if (keyed) {
        if (self->keyed_cells == NULL || !PyDict_Check(self->keyed_cells)) {
            goto slow;
        }
        PyObject *key = PyObject_CallNoArgs(self->keyed_func);
        if (key == NULL) {
            goto failed;
        }
        cell = PyDict_GetItemWithError(self->keyed_cells, key);
        Py_XINCREF(cell);
        Py_DECREF(key);
        if (cell == NULL) {
            if (PyErr_Occurred()) {
                goto failed;
            }
            goto slow;
        }
    }
    else {
        if (self->slot == NULL) {
            goto slow;
        }
        cell = PyObject_GetAttr(self->slot, str_cell);
        if (cell == NULL) {
            goto failed;
        }
    }
    session = PyObject_GetAttr(cell, str_session);
    Py_DECREF(cell);
    if (session == NULL) {
        goto failed;
    }
    if (session != Py_None) {
        return session;
    }
    Py_DECREF(session);
    goto slow;

failed:
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)
        && !(keyed && PyErr_ExceptionMatches(PyExc_TypeError))) {
        return NULL;
    }
    PyErr_Clear();
slow:
    return proxy_create(self, NULL);
}

static PyObject *
proxy_call(ProxyObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%.200s() takes keyword arguments only (they go to the session"
                     " factory when the session is made); got %zd positional",
                     Py_TYPE(self)->tp_name, PyTuple_GET_SIZE(args));
        return NULL;
    }
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        return proxy_create(self, kwargs);
    }
    return caller_session(self);
}

static int
proxy_traverse(ProxyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slot);
    Py_VISIT(self->keyed_cells);
    Py_VISIT(self->keyed_func);
    return 0;
}

static int
proxy_clear(ProxyObject *self)
{
    Py_CLEAR(self->slot);
    Py_CLEAR(self->keyed_cells);
    Py_CLEAR(self->keyed_func);
    return 0;
}

static void
proxy_dealloc(ProxyObject *self)
{
    PyObject_GC_UnTrack(self);
    proxy_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef proxy_members[] = {
    {"_slot", T_OBJECT_EX, offsetof(ProxyObject, slot), 0,
     "The scope's slot: its cell attribute is the caller's cell."},
    {"_keyed_cells", T_OBJECT_EX, offsetof(ProxyObject, keyed_cells), 0,
     "Under a scopefunc: the scope's dict of key to cell."},
    {"_keyed_func", T_OBJECT_EX, offsetof(ProxyObject, keyed_func), 0,
     "Under a scopefunc: the scopefunc; None for any other scope."},
    {NULL},
};

static PyTypeObject ProxyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.ProxyBase",
    .tp_doc = PyDoc_STR("The C part of ScopedSession: the caller's session, found in C."),
    .tp_basicsize = sizeof(ProxyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_call = (ternaryfunc)proxy_call,
    .tp_traverse = (traverseproc)proxy_traverse,
    .tp_clear = (inquiry)proxy_clear,
    .tp_dealloc = (destructor)proxy_dealloc,
    .tp_members = proxy_members,
};

/* -- Forward and SettableForward -------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *name;      /* the session's attribute, an interned str */
    PyObject *qualname;
    PyObject *doc;
    vectorcallfunc vectorcall;
} ForwardObject;

static PyTypeObject ForwardType;
static PyTypeObject SettableForwardType;

/* The proxy a forwarded member was used on, or NULL with a TypeError. */
static ProxyObject *
as_proxy(ForwardObject *self, PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &ProxyType)) {
        PyErr_Format(PyExc_TypeError,
                     "'%U' forwards to a ScopedSession's session; it was used on an"
                     " object of type %.200s",
                     self->name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (ProxyObject *)obj;
}

/* Session.<name>(*args, **kwargs): the caller's session's <name> called with
 * exactly these arguments. */
static PyObject *
forward_vectorcall(ForwardObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "'%U' needs a ScopedSession as its first argument",
                     self->name);
        return NULL;
    }
    ProxyObject *proxy = as_proxy(self, args[0]);
    if (proxy == NULL) {
        return NULL;
    }
    PyObject *session = caller_session(proxy);
    if (session == NULL) {
        return NULL;
    }
    PyObject *result;
    if (nargs == 1 && kwnames == NULL) {
        /* The common case, close() and friends: no copy of the arguments. The
           slot before the session is ours, so the session's method may use it. */
        PyObject *stack[2] = {NULL, session};
        result = PyObject_VectorcallMethod(self->name, stack + 1,
                                           1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        /* The same stack with the session in the proxy's place. */
        Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
        PyObject *small[8];
        PyObject **stack = small;
        if (total + 1 > (Py_ssize_t)Py_ARRAY_LENGTH(small)) {
            stack = PyMem_Malloc((total + 1) * sizeof(PyObject *));
            if (stack == NULL) {
                Py_DECREF(session);
                return PyErr_NoMemory();
            }
        }
        stack[1] = session;
        memcpy(stack + 2, args + 1, (total - 1) * sizeof(PyObject *));
        result = PyObject_VectorcallMethod(self->name, stack + 1,
                                           nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        if (stack != small) {
            PyMem_Free(stack);
        }
    }
    Py_DECREF(session);
    return result;
}

/* Session.<name>, not called: the caller's session's attribute (for a method, the
 * session's own bound method). On the class: the descriptor itself. */
static PyObject *
forward_get(ForwardObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    ProxyObject *proxy = as_proxy(self, obj);
    if (proxy == NULL) {
        return NULL;
    }
    PyObject *session = caller_session(proxy);
    if (session == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttr(session, self->name);
    Py_DECREF(session);
    return value;
}

/* Session.<name> = value: sets the caller's session's attribute, the session made
 * first if need be (like Python's self().<name> = value). */
static int
settable_set(ForwardObject *self, PyObject *obj, PyObject *value)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError,
                     "'%U' cannot be deleted through the proxy; delete it on the session",
                     self->name);
        return -1;
    }
    if (as_proxy(self, obj) == NULL) {
        return -1;
    }
    PyObject *session = PyObject_CallNoArgs(obj);
    if (session == NULL) {
        return -1;
    }
    int result = PyObject_SetAttr(session, self->name, value);
    Py_DECREF(session);
    return result;
}

static PyObject *
forward_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "doc", NULL};
    PyObject *name, *doc = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|O:Forward", keywords, &name, &doc)) {
        return NULL;
    }
    ForwardObject *self = (ForwardObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    self->name = name;
    self->qualname = Py_NewRef(name);
    self->doc = Py_NewRef(doc);
    self->vectorcall = (vectorcallfunc)forward_vectorcall;
    return (PyObject *)self;
}

static void
forward_dealloc(ForwardObject *self)
{
    Py_XDECREF(self->name);
    Py_XDECREF(self->qualname);
    Py_XDECREF(self->doc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
forward_repr(ForwardObject *self)
{
    return PyUnicode_FromFormat("<forwarded member %R>", self->qualname);
}

static PyMemberDef forward_members[] = {
    {"__name__", T_OBJECT, offsetof(ForwardObject, name), READONLY, NULL},
    {"__qualname__", T_OBJECT, offsetof(ForwardObject, qualname), 0, NULL},
    {"__doc__", T_OBJECT, offsetof(ForwardObject, doc), 0, NULL},
    {NULL},
};

static PyTypeObject ForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.Forward",
    .tp_doc = PyDoc_STR("Forward(name, doc=None): a member of the proxy that forwards to the"
                        " caller's session's attribute of that name."),
    .tp_basicsize = sizeof(ForwardObject),
    /* METHOD_DESCRIPTOR: Session.close() is looked up and called without a bound
       object in between, like a function defined in the class. */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(ForwardObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = forward_new,
    .tp_dealloc = (destructor)forward_dealloc,
    .tp_repr = (reprfunc)forward_repr,
    .tp_members = forward_members,
    .tp_descr_get = (descrgetfunc)forward_get,
};

static PyTypeObject SettableForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.SettableForward",
    .tp_doc = PyDoc_STR("SettableForward(name, doc=None): a forwarded attribute that can also"
                        " be set through the proxy."),
    .tp_basicsize = sizeof(ForwardObject),
    /* Not a method: Session.bind is always read through __get__. */
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = forward_new,
    .tp_dealloc = (destructor)forward_dealloc,
    .tp_repr = (reprfunc)forward_repr,
    .tp_members = forward_members,
    .tp_descr_get = (descrgetfunc)forward_get,
    .tp_descr_set = (descrsetfunc)settable_set,
};

/* -- ThreadSlot ---------------------------------------------------------------------- */

/* The thread scope's slot. Each thread's cell is owned by a threading.local
 * (the store), which drops it when the thread ends or the slot goes away: that
 * is what closes a session nobody removed. Reading a threading.local attribute
 * costs a lookup of the thread's dictionary, a lookup in the type and one in
 * that dictionary; so each thread's state dictionary (PyThreadState_GetDict)
 * also gets, under a key no other slot ever has, a weak reference to the cell.
 * Reading slot.cell is then one lookup. The store stays the truth: a missing or
 * dead weak reference sends the read to it. */

typedef struct {
    PyObject_HEAD
    PyObject *store;  /* a threading.local; its "cell" is the thread's cell */
    PyObject *key;    /* this slot's key in every thread state dictionary */
} ThreadSlotObject;

static unsigned long long thread_slot_count;

static int
is_cell_name(PyObject *name)
{
    if (name == str_cell) {
        return 1;
    }
    return PyUnicode_Check(name) && PyUnicode_Compare(name, str_cell) == 0;
}

static PyObject *
thread_slot_getattro(ThreadSlotObject *self, PyObject *name)
{
    if (!is_cell_name(name)) {
        return PyObject_GenericGetAttr((PyObject *)self, name);
    }
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict != NULL) {
        PyObject *entry = PyDict_GetItemWithError(tdict, self->key);
        if (entry != NULL) {
            if (!PyWeakref_CheckRef(entry)) {
                return Py_NewRef(entry);
            }
#if PY_VERSION_HEX >= 0x030D0000
            PyObject *cell;
            if (PyWeakref_GetRef(entry, &cell) > 0) {
                return cell;
            }
            PyErr_Clear();
#else
            PyObject *cell = PyWeakref_GetObject(entry);
            if (cell != NULL && cell != Py_None) {
                return Py_NewRef(cell);
            }
            PyErr_Clear();
#endif
        }
        else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(self->store, name);
}

static int
thread_slot_setattro(ThreadSlotObject *self, PyObject *name, PyObject *value)
{
    if (!is_cell_name(name)) {
        PyErr_Format(PyExc_AttributeError, "a ThreadSlot has only 'cell', not %R", name);
        return -1;
    }
    if (PyObject_SetAttr(self->store, name, value) < 0) {
        return -1;
    }
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict == NULL) {
        return 0;  /* nothing can be cached for this thread: reads use the store */
    }
    if (value == NULL) {
        if (PyDict_DelItem(tdict, self->key) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
                return -1;
            }
            PyErr_Clear();
        }
        return 0;
    }
    PyObject *entry = PyWeakref_NewRef(value, NULL);
    if (entry == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        /* Not weakly referable (the EMPTY marker, which lives for good). */
        PyErr_Clear();
        entry = Py_NewRef(value);
    }
    int result = PyDict_SetItem(tdict, self->key, entry);
    Py_DECREF(entry);
    return result;
}

static PyObject *
thread_slot_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"store", NULL};
    PyObject *store;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:ThreadSlot", keywords, &store)) {
        return NULL;
    }
    PyObject *key = PyUnicode_FromFormat("scoped_session.ThreadSlot.%llu", ++thread_slot_count);
    if (key == NULL) {
        return NULL;
    }
    ThreadSlotObject *self = (ThreadSlotObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    self->store = Py_NewRef(store);
    self->key = key;
    return (PyObject *)self;
}

static int
thread_slot_traverse(ThreadSlotObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->store);
    return 0;
}

static int
thread_slot_clear(ThreadSlotObject *self)
{
    Py_CLEAR(self->store);
    return 0;
}

static void
thread_slot_dealloc(ThreadSlotObject *self)
{
    PyObject_GC_UnTrack(self);
    thread_slot_clear(self);
    Py_CLEAR(self->key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ThreadSlotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.ThreadSlot",
    .tp_doc = PyDoc_STR("ThreadSlot(store): the thread scope's slot; store is a"
                        " threading.local that owns each thread's cell."),
    .tp_basicsize = sizeof(ThreadSlotObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = thread_slot_new,
    .tp_getattro = (getattrofunc)thread_slot_getattro,
    .tp_setattro = (setattrofunc)thread_slot_setattro,
    .tp_traverse = (traverseproc)thread_slot_traverse,
    .tp_clear = (inquiry)thread_slot_clear,
    .tp_dealloc = (destructor)thread_slot_dealloc,
};

/* -- the module -------------------------------------------------------------------- */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "scoped_session._speedups",
    .m_doc = PyDoc_STR("The proxy's hot path in C (optional; see scoped_session/_proxy.py)."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_cell = PyUnicode_InternFromString("cell");
    str_session = PyUnicode_InternFromString("session");
    str_create = PyUnicode_InternFromString("_create");
    if (str_cell == NULL || str_session == NULL || str_create == NULL) {
        return NULL;
    }
    if (PyType_Ready(&ProxyType) < 0 || PyType_Ready(&ForwardType) < 0
        || PyType_Ready(&SettableForwardType) < 0 || PyType_Ready(&ThreadSlotType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "ProxyBase", (PyObject *)&ProxyType) < 0
        || PyModule_AddObjectRef(module, "Forward", (PyObject *)&ForwardType) < 0
        || PyModule_AddObjectRef(module, "SettableForward", (PyObject *)&SettableForwardType) < 0
        || PyModule_AddObjectRef(module, "ThreadSlot", (PyObject *)&ThreadSlotType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
